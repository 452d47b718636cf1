"""Figures of run directories (matplotlib, `pip install 'mrw[analysis]'`).

- `plot_run`: what happened when. Top: one row per workflow, each call a bar from issue to
  end (TTFT part darker), its recorded wait before it as a thin line, failures in red, calls
  that never finished hatched. Bottom: the engine's running/waiting requests and KV-cache use
  from metrics.jsonl. This is the picture that explains a makespan: where the chain waited
  on tools, where on the engine's queue.
- `plot_compare`: CDFs of TTFT, E2E and workflow makespan for several runs (e.g. vLLM vs
  Parrot, or a batch-size sweep).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from mrw.errors import MrwError
from mrw.replay import run as runmod

from .summary import classify, summarize


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MrwError("plots need matplotlib: pip install 'mrw[analysis]'") from None
    return plt


def _lanes(calls: list[dict]) -> dict[str, int]:
    """Greedy lane per call so that overlapping calls of one workflow do not hide each other."""
    ends: list[float] = []
    lane: dict[str, int] = {}
    for c in sorted(calls, key=lambda c: c.get("t_issue") if c.get("t_issue") is not None else c.get("t_scheduled") or 0.0):
        start = c.get("t_issue") if c.get("t_issue") is not None else (c.get("t_scheduled") or 0.0)
        for i, e in enumerate(ends):
            if e <= start:
                ends[i] = c.get("t_end") or start
                lane[c["call_id"]] = i
                break
        else:
            ends.append(c.get("t_end") or start)
            lane[c["call_id"]] = len(ends) - 1
    return lane


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    plt = _plt()
    d = Path(run_dir)
    meta, rows = runmod.read_run(d)
    by_wf: dict[str, list[dict]] = {}
    for r in rows:
        by_wf.setdefault(r["workflow_id"], []).append(r)
    order = sorted(by_wf, key=lambda w: min((c.get("t_arrival") or 0.0) for c in by_wf[w]))
    metrics = []
    mp = d / runmod.METRICS
    if mp.exists():
        for line in mp.read_bytes().splitlines():
            try:
                metrics.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass
    n = len(order)
    fig, axes = plt.subplots(
        2 if metrics else 1, 1, sharex=True, figsize=(11, min(2.0 + 0.35 * n, 14) + (2.2 if metrics else 0)),
        gridspec_kw={"height_ratios": [max(n, 3), 3]} if metrics else None, squeeze=False,
    )
    ax = axes[0][0]
    for y, wid in enumerate(order):
        calls = by_wf[wid]
        lanes = _lanes(calls)
        k = max(lanes.values(), default=0) + 1
        h = 0.8 / k
        arr = min((c.get("t_arrival") or 0.0) for c in calls)
        ax.plot([arr], [y], marker="|", color="black", markersize=10)
        for c in calls:
            yy = y - 0.4 + h * lanes[c["call_id"]] + h / 2
            kind = classify(c)
            ti, tf, te = c.get("t_issue"), c.get("t_first_token"), c.get("t_end")
            if c.get("t_scheduled") is not None and c.get("wait_s"):
                ax.plot([c["t_scheduled"] - c["wait_s"], c["t_scheduled"]], [yy, yy], color="tab:green", lw=1)
            if kind == "ok" and ti is not None and te is not None:
                if tf is not None:
                    ax.barh(yy, tf - ti, left=ti, height=h * 0.9, color="tab:orange")
                    ax.barh(yy, te - tf, left=tf, height=h * 0.9, color="tab:blue")
                else:
                    ax.barh(yy, te - ti, left=ti, height=h * 0.9, color="tab:blue")
            elif kind == "failed" and ti is not None:
                ax.barh(yy, max((te or ti) - ti, 0.01), left=ti, height=h * 0.9, color="tab:red")
            elif kind == "not_finished" and ti is not None:
                end = te if te is not None else max((r.get("t_end") or 0.0) for r in rows)
                ax.barh(yy, max(end - ti, 0.01), left=ti, height=h * 0.9, color="none", edgecolor="tab:red", hatch="//")
    ax.set_yticks(range(n))
    ax.set_yticklabels(order if n <= 40 else [""] * n, fontsize=7)
    ax.invert_yaxis()
    ax.set_ylabel("workflow")
    eng = meta.get("engine", {})
    knobs = ", ".join(f"{k}={v}" for k, v in (meta.get("knobs") or {}).items())
    ax.set_title(f"{d.name}: {eng.get('engine')} {eng.get('model') or ''} {knobs} [{meta.get('status')}]", fontsize=9, loc="left")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color="tab:orange", label="TTFT"), Patch(color="tab:blue", label="decode"),
                 Patch(color="tab:green", label="tool/think wait"), Patch(color="tab:red", label="failed"),
                 Patch(facecolor="none", edgecolor="tab:red", hatch="//", label="not finished")],
        fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=5, frameon=False,
    )  # fmt: skip
    if metrics:
        mx = axes[1][0]
        t = [m["t"] for m in metrics]
        for key, label in (("num_requests_running", "running"), ("num_requests_waiting", "waiting")):
            if any(key in m for m in metrics):
                mx.step(t, [m.get(key, 0.0) for m in metrics], where="post", label=label)
        mx.set_ylabel("requests")
        if any("kv_cache_usage_perc" in m for m in metrics):
            kx = mx.twinx()
            kx.plot(t, [100 * m.get("kv_cache_usage_perc", 0.0) for m in metrics], color="tab:gray", ls="--", label="KV cache %")
            kx.set_ylabel("KV cache %")
            kx.set_ylim(0, 100)
        mx.legend(fontsize=7, loc="upper left")
    axes[-1][0].set_xlabel("run time (s)")
    fig.tight_layout()
    path = Path(out) if out else d / "timeline.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cdf(ax: Any, xs: list[float], label: str) -> None:
    xs = sorted(xs)
    if xs:
        ax.step([xs[0], *xs], [0.0, *((i + 1) / len(xs) for i in range(len(xs)))], where="post", label=label)


def plot_compare(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for d in run_dirs:
        _, rows = runmod.read_run(d)
        s = summarize(d, write=False)
        label = Path(d).name
        ok = [r for r in rows if r.get("ok")]
        _cdf(axes[0], [1e3 * (r["t_first_token"] - r["t_issue"]) for r in ok if r.get("t_first_token") is not None and r.get("t_issue") is not None], label)
        _cdf(axes[1], [1e3 * (r["t_end"] - r["t_issue"]) for r in ok if r.get("t_issue") is not None], label)
        _cdf(axes[2], [w["makespan_s"] for w in s["per_workflow"] if w["makespan_s"] is not None], label)
    for ax, title in zip(axes, ("TTFT (ms)", "E2E latency (ms)", "workflow makespan (s)")):
        ax.set_xlabel(title)
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

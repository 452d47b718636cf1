"""The study's figures from a sweep table (matplotlib, Agg: no display needed).

Sweep figures (SWEEP_DIR/analysis/figures/):
  energy_per_token_vs_batch.png  energy per output token against batch size, one line per
                                 workload (other knobs at their reference values)
  pareto_latency_energy.png      workflow makespan against energy per workflow for every
                                 serving configuration (batch, cap, ...) at one length scale,
                                 the Pareto frontier (lower is better on both) marked
  cap_energy_latency.png         energy per output token and makespan against the power cap
  energy_vs_output_length.png    energy per workflow against output tokens per workflow, a
                                 least-squares line per workload and its slope (J per token)
  latency_breakdown.png          mean critical path of a workflow per point, stacked
Per run (SWEEP_DIR/analysis/figures/runs/POINT/):
  timeline.png                   power over time (GPU per device, CPU, DRAM) with the cap
                                 and the engine's running requests
  breakdown.png                  each workflow's critical path, stacked

Energy axes. Where energy was measured (GPU via NVML, CPU/DRAM via RAPL), energy axes show
it, and say which domains. Where nothing was measured (a CPU machine without RAPL access,
like CI) the energy figures use a stand-in: the engine process tree's CPU time, from the
process meter, labelled on the axis and in the title as "CPU time (stand-in: energy not
measured)". A figure with neither is skipped with the reason printed. No figure ever shows
an energy number that was not measured.

Reference values. A figure about one knob holds the others fixed: cap uncapped (else the
highest), out/in scale 1 (else the closest), the first prefix-caching and model-length
value, the largest batch for cap figures and the smallest-but-default for others. The
title says what was held.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

FIG_DIR = "figures"
DPI = 120
SIZE = (8.0, 5.0)  # inches -> 960 x 600 px
WIDE = (12.0, 5.0)  # two panels -> 1440 x 600 px
MAX_WORKFLOWS_PLOTTED = 60


@dataclass(slots=True)
class FigureResult:
    name: str
    path: str | None = None
    reason: str | None = None  # why it was skipped
    note: str | None = None  # e.g. "stand-in axis"
    size_px: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "reason": self.reason, "note": self.note, "size_px": self.size_px}


@dataclass(slots=True)
class EnergyAxis:
    per_token: str
    per_workflow: str
    total: str
    label_token: str
    label_workflow: str
    slope_unit: str
    stand_in: bool
    note: str


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def energy_axis(df) -> EnergyAxis | None:
    """Which columns energy figures plot: measured energy, else the CPU-time stand-in."""
    if "j_per_output_token" in df and df["j_per_output_token"].notna().any():
        doms = sorted({d for d in df.get("energy_domains", []) if isinstance(d, str)})
        dom = doms[0].upper().replace("+", "+") if len(doms) == 1 else "mixed domains: " + ", ".join(doms)
        return EnergyAxis(
            "j_per_output_token", "j_per_workflow", "energy_j",
            f"energy per output token (J, {dom})", f"energy per workflow (J, {dom})", "J per output token",
            False, f"measured energy ({dom})",
        )  # fmt: skip
    if "engine_cpu_ms_per_output_token" in df and df["engine_cpu_ms_per_output_token"].notna().any():
        return EnergyAxis(
            "engine_cpu_ms_per_output_token", "engine_cpu_s_per_workflow", "engine_cpu_s",
            "engine CPU time per output token (ms)\nstand-in: energy not measured",
            "engine CPU time per workflow (s)\nstand-in: energy not measured", "ms CPU per output token",
            True, "stand-in axis: engine CPU time (energy not measured on this machine)",
        )  # fmt: skip
    return None


NO_ENERGY = (
    "no run measured energy (no NVML GPU, no readable RAPL) and no process CPU time was recorded "
    "for a stand-in; nothing to plot on an energy axis"
)
NOT_METERED = "no run was metered (no energy.json in the run directories); nothing to plot on an energy axis"


def no_energy_reason(df) -> str:
    if "energy_status" not in df or df["energy_status"].isna().all():
        return NOT_METERED
    return NO_ENERGY


# ---------------------------------------------------------------------------- selection


def _isnull(v: Any) -> bool:
    try:
        import pandas as pd

        return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
    except ImportError:
        return v is None


def _eq(series, v):
    if _isnull(v):
        return series.isna()
    return series.eq(v).fillna(False).astype(bool)


def _values(df, col: str) -> list[Any]:
    if col not in df:
        return [None]
    vals = list(dict.fromkeys(None if _isnull(v) else v for v in df[col].tolist()))
    return vals


def _reference(df, col: str) -> Any:
    vals = _values(df, col)
    if len(vals) == 1:
        return vals[0]
    if col == "cap_w":
        return None if None in vals else max(v for v in vals if v is not None)
    if col in ("out_scale", "in_scale"):
        return min((v for v in vals if v is not None), key=lambda v: (abs(math.log(v)), v))
    if col == "batch":
        nums = sorted(v for v in vals if v is not None)
        return nums[-1] if nums else None
    return vals[0]


def _fix(df, keep: set[str], ref_overrides: dict[str, Any] | None = None):
    """Rows with every knob not in `keep` at its reference value; returns (rows, held)."""
    held = {}
    mask = None
    for col in ("batch", "prefix_caching", "max_model_len", "cap_w", "out_scale", "in_scale"):
        if col in keep or col not in df:
            continue
        if len(_values(df, col)) <= 1:
            continue
        ref = (ref_overrides or {}).get(col, _reference(df, col))
        held[col] = ref
        m = _eq(df[col], ref)
        mask = m if mask is None else (mask & m)
    return (df[mask] if mask is not None else df), held


def _held_text(held: dict[str, Any]) -> str:
    if not held:
        return ""
    names = {"batch": "batch", "prefix_caching": "prefix caching", "max_model_len": "max len", "cap_w": "cap",
             "out_scale": "out×", "in_scale": "in×"}

    def v(k: str, x: Any) -> str:
        if k == "cap_w":
            return "uncapped" if x is None else f"{x:g} W"
        if x is None:
            return "default"
        return f"{x:g}" if isinstance(x, float) else str(x)

    return "held: " + ", ".join(f"{names[k]} {v(k, x)}" for k, x in held.items())


def _label(row: dict[str, Any], knobs: list[str]) -> str:
    parts = []
    for k in knobs:
        x = row.get(k)
        if k == "batch":
            parts.append(f"b{x}" if not _isnull(x) else "bdef")
        elif k == "cap_w":
            parts.append(f"{x:g}W" if not _isnull(x) else "uncapped")
        elif k == "out_scale":
            parts.append(f"out×{x:g}")
        elif k == "in_scale":
            parts.append(f"in×{x:g}")
        elif k == "prefix_caching" and not _isnull(x):
            parts.append("pc" if x else "no-pc")
        elif k == "max_model_len" and not _isnull(x):
            parts.append(f"len{x}")
    return " ".join(parts)


def _varying(df) -> list[str]:
    return [c for c in ("batch", "cap_w", "out_scale", "in_scale", "prefix_caching", "max_model_len") if c in df and len(_values(df, c)) > 1]


def _save(fig, path: Path) -> tuple[int, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    w, h = fig.get_size_inches()
    _plt().close(fig)
    return (round(w * DPI), round(h * DPI))


def _new(size=SIZE, ncols: int = 1):
    plt = _plt()
    fig, ax = plt.subplots(1, ncols, figsize=size, layout="constrained")
    return fig, ax


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _std(row: dict[str, Any], col: str) -> float:
    v = row.get(f"{col}_std")
    return 0.0 if _isnull(v) else float(v)


# ---------------------------------------------------------------------------- sweep figures


def fig_energy_vs_batch(agg, out: Path, ax_e: EnergyAxis | None) -> FigureResult:
    name = "energy_per_token_vs_batch"
    if ax_e is None:
        return FigureResult(name, reason=no_energy_reason(agg))
    batches = [b for b in _values(agg, "batch") if b is not None]
    if len(batches) < 2:
        return FigureResult(name, reason="needs at least two batch sizes (--batch 1,8,32,...)")
    df, held = _fix(agg, {"batch"})
    df = df[df["batch"].notna() & df[ax_e.per_token].notna()]
    if df.empty:
        return FigureResult(name, reason="no point with both a batch size and an energy value at the reference knobs")
    fig, ax = _new()
    for wl, g in df.groupby("trace", sort=False):
        g = g.sort_values("batch")
        rows = g.to_dict("records")
        ax.errorbar([int(r["batch"]) for r in rows], [r[ax_e.per_token] for r in rows],
                    yerr=[_std(r, ax_e.per_token) for r in rows], marker="o", capsize=3, label=str(wl))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(int(b) for b in df["batch"].unique()))
    ax.get_xaxis().set_major_formatter(_int_formatter())
    _style(ax, f"Energy per output token vs batch size\n{_held_text(held)}", "batch size (max_num_seqs)", ax_e.label_token)
    ax.set_ylim(bottom=0)
    ax.legend(title="workload (trace)")
    size = _save(fig, out / f"{name}.png")
    return FigureResult(name, str(out / f"{name}.png"), note=ax_e.note if ax_e.stand_in else None, size_px=size)


def _int_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{int(x)}" if x >= 1 else f"{x:g}")


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the points no other point beats on both (lower x and lower y), by x."""
    idx = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    front, best = [], math.inf
    for i in idx:
        if ys[i] < best:
            front.append(i)
            best = ys[i]
    return front


def fig_pareto(agg, out: Path, ax_e: EnergyAxis | None) -> FigureResult:
    name = "pareto_latency_energy"
    if ax_e is None:
        return FigureResult(name, reason=no_energy_reason(agg))
    # Length scales change the work itself (half the output is not a cheaper way to do the
    # same thing), so the frontier is taken over the serving knobs only, at one length.
    df, held = _fix(agg, {"batch", "cap_w", "prefix_caching", "max_model_len"})
    df = df[df[ax_e.per_workflow].notna() & df["makespan_mean_s"].notna()]
    if len(df) < 2:
        return FigureResult(name, reason="needs at least two points (batch sizes, caps, ...) with both a makespan and an energy value")
    traces = list(dict.fromkeys(df["trace"].tolist()))
    plt = _plt()
    ncols = min(len(traces), 3)
    nrows = -(-len(traces) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(SIZE[0] * (1 if ncols == 1 else 0.75 * ncols), SIZE[1] * nrows), layout="constrained", squeeze=False)
    vary = _varying(df)
    for k, tr in enumerate(traces):
        ax = axes[k // ncols][k % ncols]
        rows = df[df["trace"] == tr].to_dict("records")
        xs = [float(r["makespan_mean_s"]) for r in rows]
        ys = [float(r[ax_e.per_workflow]) for r in rows]
        front = pareto_front(xs, ys)
        batches = list(dict.fromkeys(None if _isnull(r.get("batch")) else int(r["batch"]) for r in rows))
        for j, b in enumerate(batches):
            idx = [i for i, r in enumerate(rows) if (None if _isnull(r.get("batch")) else int(r["batch"])) == b]
            ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], s=28, color=f"C{j % 10}", alpha=0.75, zorder=2,
                       label=f"batch {b}" if b is not None else "batch default")
        fx = [xs[i] for i in front]
        fy = [ys[i] for i in front]
        ax.step(fx, fy, where="post", color="tab:red", alpha=0.6, zorder=1)
        ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="tab:red", linewidths=1.8, label="Pareto frontier", zorder=3)
        # number the frontier points; the key says what each one is
        key = []
        for n, i in enumerate(front, 1):
            ax.annotate(str(n), (xs[i], ys[i]), textcoords="offset points", xytext=(6, 4), fontsize=8, color="tab:red")
            key.append(f"{n}: {_label(rows[i], vary)}")
        ax.text(0.98, 0.60, "frontier\n" + "\n".join(key[:14]) + ("\n..." if len(key) > 14 else ""), transform=ax.transAxes,
                ha="right", va="top", fontsize=7, family="monospace",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        _style(ax, f"{tr}: latency vs energy" + (f"\n{_held_text(held)}" if held else ""), "workflow makespan, mean (s)", ax_e.label_workflow)
        ax.legend(fontsize=8)
    for k in range(len(traces), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    size = _save(fig, out / f"{name}.png")
    return FigureResult(name, str(out / f"{name}.png"), note=ax_e.note if ax_e.stand_in else None, size_px=size)


def fig_cap(agg, out: Path, ax_e: EnergyAxis | None) -> FigureResult:
    name = "cap_energy_latency"
    caps = _values(agg, "cap_w")
    if len(caps) < 2:
        return FigureResult(name, reason="needs at least two power caps (--cap none,300,200)")
    if ax_e is None:
        return FigureResult(name, reason=no_energy_reason(agg))
    order = sorted(c for c in caps if c is not None) + ([None] if None in caps else [])
    ticks = [f"{c:g} W" if c is not None else "uncapped" for c in order]
    df, held = _fix(agg, {"cap_w", "batch"})
    fig, (a1, a2) = _new(WIDE, 2)
    lines = 0
    for (tr, b), g in df.groupby(["trace", "batch"], sort=False, dropna=False):
        rows = {None if _isnull(r["cap_w"]) else r["cap_w"]: r for r in g.to_dict("records")}
        xs = [i for i, c in enumerate(order) if c in rows]
        if len(xs) < 1:
            continue
        lab = f"{tr} b{b}" if not _isnull(b) else f"{tr}"
        rr = [rows[order[i]] for i in xs]
        a1.errorbar(xs, [r[ax_e.per_token] for r in rr], yerr=[_std(r, ax_e.per_token) for r in rr], marker="o", capsize=3, label=lab)
        a2.errorbar(xs, [r["makespan_mean_s"] for r in rr], yerr=[_std(r, "makespan_mean_s") for r in rr], marker="s", capsize=3, label=lab)
        lines += 1
    if lines == 0:
        _plt().close(fig)
        return FigureResult(name, reason="no point at the reference knobs")
    for a in (a1, a2):
        a.set_xticks(range(len(order)), ticks)
        a.set_ylim(bottom=0)
    _style(a1, "Energy per output token vs power cap", "GPU power cap", ax_e.label_token)
    _style(a2, "Workflow makespan vs power cap", "GPU power cap", "workflow makespan, mean (s)")
    a2.legend(fontsize=8, title="workload, batch")
    fig.suptitle(_held_text(held) or " ", fontsize=9)
    size = _save(fig, out / f"{name}.png")
    return FigureResult(name, str(out / f"{name}.png"), note=ax_e.note if ax_e.stand_in else None, size_px=size)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float | None]:
    """Least squares y = slope * x + intercept; returns (slope, intercept, r²)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("all x equal")
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx
    icpt = my - slope * mx
    syy = sum((y - my) ** 2 for y in ys)
    r2 = 1 - sum((y - (slope * x + icpt)) ** 2 for x, y in zip(xs, ys)) / syy if syy > 0 else None
    return slope, icpt, r2


def fig_energy_vs_output(runs, out: Path, ax_e: EnergyAxis | None) -> FigureResult:
    name = "energy_vs_output_length"
    if len(_values(runs, "out_scale")) < 2:
        return FigureResult(name, reason="needs at least two output-length scales (--out-scale 0.5,1,2)")
    if ax_e is None:
        return FigureResult(name, reason=no_energy_reason(runs))
    df, held = _fix(runs, {"out_scale"})
    df = df[df[ax_e.per_workflow].notna() & df["output_tokens_per_workflow"].notna()]
    fig, ax = _new()
    fits = 0
    slopes = []
    for i, (tr, g) in enumerate(df.groupby("trace", sort=False)):
        xs = [float(x) for x in g["output_tokens_per_workflow"]]
        ys = [float(y) for y in g[ax_e.per_workflow]]
        color = f"C{i % 10}"
        ax.scatter(xs, ys, color=color, s=26, zorder=3)
        if len(set(xs)) >= 2:
            slope, icpt, r2 = linear_fit(xs, ys)
            lo, hi = min(xs), max(xs)
            ax.plot([lo, hi], [slope * lo + icpt, slope * hi + icpt], color=color,
                    label=f"{tr}: slope {slope:.3g} {ax_e.slope_unit}" + (f" (R² {r2:.2f})" if r2 is not None else ""))
            slopes.append((tr, slope))
            fits += 1
        else:
            ax.plot([], [], color=color, label=f"{tr}: one output length, no fit")
    if fits == 0:
        _plt().close(fig)
        return FigureResult(name, reason="no workload has runs at two output lengths with energy values")
    _style(ax, f"Energy vs output length (one dot per run)\n{_held_text(held)}", "output tokens per workflow", ax_e.label_workflow)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    size = _save(fig, out / f"{name}.png")
    note = "; ".join(f"{t}: {s:.4g} {ax_e.slope_unit}" for t, s in slopes)
    if ax_e.stand_in:
        note = f"{ax_e.note}; {note}"
    return FigureResult(name, str(out / f"{name}.png"), note=note, size_px=size)


BREAKDOWN = (
    ("decode", "LLM: decode (E2E − TTFT)", "tab:blue"),
    ("ttft", "LLM: TTFT (queueing + prefill)", "tab:orange"),
    ("wait", "tool / think wait", "tab:green"),
    ("delay", "dispatch delay", "tab:red"),
)


def _breakdown_parts(llm: Any, ttft: Any, wait: Any, delay: Any) -> dict[str, float] | None:
    if any(_isnull(v) for v in (llm, wait, delay)):
        return None
    t = 0.0 if _isnull(ttft) else float(ttft)
    return {"decode": max(float(llm) - t, 0.0), "ttft": t, "wait": float(wait), "delay": max(float(delay), 0.0)}


def _stacked(ax, labels: list[str], parts: list[dict[str, float]]) -> None:
    left = [0.0] * len(parts)
    ys = list(range(len(parts)))
    for key, lab, color in BREAKDOWN:
        w = [p[key] for p in parts]
        ax.barh(ys, w, left=left, color=color, label=lab, height=0.7)
        left = [a + b for a, b in zip(left, w)]
    ax.set_yticks(ys, labels, fontsize=7 if len(parts) > 20 else 9)
    ax.invert_yaxis()


def fig_breakdown_sweep(agg, out: Path) -> FigureResult:
    name = "latency_breakdown"
    rows = [r for r in agg.to_dict("records") if _breakdown_parts(r.get("cp_llm_s"), r.get("cp_ttft_s"), r.get("cp_wait_s"), r.get("cp_delay_s"))]
    if not rows:
        return FigureResult(name, reason="no point has a critical-path breakdown (no complete workflow)")
    rows = rows[:80]
    parts = [_breakdown_parts(r["cp_llm_s"], r["cp_ttft_s"], r["cp_wait_s"], r["cp_delay_s"]) for r in rows]
    h = max(SIZE[1], 1.2 + 0.28 * len(rows))
    fig, ax = _new((SIZE[0] + 2, h))
    _stacked(ax, [str(r["point"]) for r in rows], parts)  # type: ignore[arg-type]
    _style(ax, "Where a workflow's time goes: mean critical path per point", "seconds", "")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    size = _save(fig, out / f"{name}.png")
    return FigureResult(name, str(out / f"{name}.png"), size_px=size)


# ---------------------------------------------------------------------------- per run


def fig_breakdown_run(run_dir: Path, out_png: Path, title: str) -> FigureResult:
    name = f"breakdown:{run_dir.name}"
    sp = run_dir / "summary.json"
    if not sp.exists():
        return FigureResult(name, reason="no summary.json")
    s = orjson.loads(sp.read_bytes())
    wfs = sorted((w for w in s.get("per_workflow") or [] if w.get("critical_path")), key=lambda w: str(w["id"]))
    if not wfs:
        return FigureResult(name, reason="no complete workflow")
    note = None
    if len(wfs) > MAX_WORKFLOWS_PLOTTED:
        note = f"first {MAX_WORKFLOWS_PLOTTED} of {len(wfs)} workflows"
        wfs = wfs[:MAX_WORKFLOWS_PLOTTED]
    parts = [_breakdown_parts(w["critical_path"]["llm_s"], w["critical_path"].get("llm_ttft_s"), w["critical_path"]["wait_s"],
                              w["critical_path"]["delay_s"]) for w in wfs]
    h = max(SIZE[1], 1.2 + 0.25 * len(wfs))
    fig, ax = _new((SIZE[0], h))
    _stacked(ax, [str(w["id"]) for w in wfs], parts)  # type: ignore[arg-type]
    _style(ax, f"Critical path per workflow: {title}", "seconds from arrival", "workflow")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, frameon=False)
    size = _save(fig, out_png)
    return FigureResult(name, str(out_png), note=note, size_px=size)


def _read_timeline(run_dir: Path) -> dict[tuple[str, str], dict[str, list[float]]]:
    """power.csv -> {(source, device): {column: values}} (numbers only)."""
    p = run_dir / "power.csv"
    series: dict[tuple[str, str], dict[str, list[float]]] = {}
    if not p.exists():
        return series
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            key = (row.get("source") or "", row.get("device") or "")
            d = series.setdefault(key, {})
            try:
                t = float(row["t_s"])
            except (TypeError, ValueError, KeyError):
                continue
            for col in ("power_w", "cpu_s", "util_gpu_pct"):
                v = row.get(col)
                if v not in (None, ""):
                    try:
                        d.setdefault(col, []).append(float(v))
                        d.setdefault(f"t:{col}", []).append(t)
                    except ValueError:
                        pass
    return series


def _read_metrics(run_dir: Path) -> tuple[list[float], list[float]]:
    p = run_dir / "metrics.jsonl"
    ts, run = [], []
    if not p.exists():
        return ts, run
    with open(p, "rb") as f:
        for line in f:
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if "t" in d and "num_requests_running" in d:
                ts.append(float(d["t"]))
                run.append(float(d["num_requests_running"]))
    return ts, run


def fig_timeline_run(run_dir: Path, out_png: Path, title: str, cap_w: float | None) -> FigureResult:
    name = f"timeline:{run_dir.name}"
    series = _read_timeline(run_dir)
    power = {k: v for k, v in series.items() if k[0] in ("gpu", "cpu", "dram", "psys") and v.get("power_w")}
    stand_in = None
    if not power:
        eng = series.get(("process", "engine"), {})
        if len(eng.get("cpu_s", [])) >= 2:
            stand_in = eng
        else:
            return FigureResult(name, reason="no power samples (no GPU/RAPL meter) and no engine CPU samples in power.csv")
    fig, ax = _new()
    if power:
        for (src, dev), d in sorted(power.items()):
            lab = f"GPU {dev}" if src == "gpu" else f"{src.upper()} {dev}"
            ax.plot(d["t:power_w"], d["power_w"], lw=1.0, label=lab)
        if cap_w is not None:
            ax.axhline(cap_w, color="k", ls="--", lw=1, label=f"cap {cap_w:g} W")
        ylabel = "power (W)"
        note = None
    else:
        t, c = stand_in["t:cpu_s"], stand_in["cpu_s"]  # type: ignore[index]
        tt = [(a + b) / 2 for a, b in zip(t, t[1:])]
        cores = [max((c2 - c1) / (t2 - t1), 0.0) if t2 > t1 else 0.0 for c1, c2, t1, t2 in zip(c, c[1:], t, t[1:])]
        ax.plot(tt, cores, lw=1.0, color="tab:purple", label="engine CPU use")
        ylabel = "engine CPU use (cores busy)\nstand-in: power not measured"
        note = "stand-in axis: engine CPU use (power not measured on this machine)"
    ax.set_ylim(bottom=0)
    mt, mr = _read_metrics(run_dir)
    if mt:
        ax2 = ax.twinx()
        ax2.step(mt, mr, where="post", color="tab:gray", alpha=0.6, lw=1, label="running requests (vLLM)")
        ax2.set_ylabel("running requests")
        ax2.set_ylim(bottom=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    else:
        ax.legend(fontsize=8, loc="upper right")
    _style(ax, f"Power timeline: {title}", "time since run start (s)", ylabel)
    size = _save(fig, out_png)
    return FigureResult(name, str(out_png), note=note, size_px=size)


# ---------------------------------------------------------------------------- all


def make_figures(root: str | Path, runs, agg, *, per_run: bool = True) -> list[FigureResult]:
    """Every figure of a sweep; the ones that cannot be drawn come back with a reason."""
    out = Path(root) / "analysis" / FIG_DIR
    out.mkdir(parents=True, exist_ok=True)
    ax_e = energy_axis(runs)
    res = [
        fig_energy_vs_batch(agg, out, ax_e),
        fig_pareto(agg, out, ax_e),
        fig_cap(agg, out, ax_e),
        fig_energy_vs_output(runs, out, ax_e),
        fig_breakdown_sweep(agg, out),
    ]
    if per_run:
        for r in runs.to_dict("records"):
            d = Path(r["run_dir"])
            cap = r.get("cap_effective_w")
            cap = r.get("cap_w") if _isnull(cap) else cap
            res.append(fig_timeline_run(d, out / "runs" / d.name / "timeline.png", str(r["point"]), None if _isnull(cap) else float(cap)))
            res.append(fig_breakdown_run(d, out / "runs" / d.name / "breakdown.png", str(r["point"])))
    index = out / "figures.json"
    from mrw.trace import write_atomic

    write_atomic(index, orjson.dumps([f.to_dict() for f in res], option=orjson.OPT_INDENT_2))
    return res

"""One table across a sweep's points: `mrw analyze SWEEP_DIR`.

Each run directory under SWEEP_DIR/runs/ becomes one row: its knobs (from point.json) and
its metrics (from its own summary.json, recomputed when missing or older than the run's
files, and from energy.json / power.csv when the run was metered). Repeats of a point are
then folded into one row with the mean and the sample standard deviation (`X` and `X_std`,
`n` repeats).

A metric that was not measured stays empty (NaN; blank in the CSV, null in Parquet, "n/a"
when printed); nothing is estimated to fill it. Energy columns in particular:
  - `energy_*_j` are the counters' differences over the run window (gross: the idle
    baseline is not subtracted; `energy_net_j` subtracts the baseline's average power times
    the run's duration where a baseline was measured);
  - `energy_j` sums the measured domains among GPU, CPU package and DRAM, and
    `energy_domains` says which ones (a CPU-only sum is not comparable with a GPU+CPU one);
  - per-token and per-workflow figures divide `energy_j` by the run's output tokens, all
    tokens, and complete workflows.
The stand-in used where no energy is measured (see docs/sweeps.md) is the engine process
tree's CPU time (`engine_cpu_s`), from the process meter: labelled as CPU time, never as energy.

Writes SWEEP_DIR/analysis/sweep_runs.{csv,parquet} (one row per run) and
SWEEP_DIR/analysis/sweep.{csv,parquet} (one row per point, repeats folded).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable

import orjson

from mrw.errors import MrwError

ANALYSIS_DIR = "analysis"

TEXT_COLUMNS = {"point", "run_dir", "trace", "workload", "engine", "status", "trace_sha256", "energy_domains", "energy_status"}

# The knob columns that identify a point (repeats share them).
KEY_COLUMNS = ["trace", "workload", "engine", "batch", "prefix_caching", "max_model_len", "cap_w", "out_scale", "in_scale"]


# ---------------------------------------------------------------------------- one run


def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _stale(run_dir: Path) -> bool:
    s = run_dir / "summary.json"
    if not s.exists():
        return True
    t = s.stat().st_mtime
    return any((run_dir / f).exists() and (run_dir / f).stat().st_mtime > t for f in ("run.json", "requests.jsonl", "energy.json"))


def load_summary(run_dir: str | os.PathLike, *, refresh: bool = True) -> dict[str, Any]:
    """summary.json of a run, recomputed (and rewritten) when missing or stale."""
    from mrw.analysis.summary import summarize

    d = Path(run_dir)
    if refresh and _stale(d):
        try:
            return summarize(d, write=True)
        except MrwError:
            return summarize(d, write=False)
    return orjson.loads((d / "summary.json").read_bytes())


def gpu_utilisation(run_dir: Path, duration_s: float | None) -> float | None:
    """Mean GPU utilisation (%) over the run window, from the power timeline; None if the
    timeline has no GPU utilisation samples."""
    p = run_dir / "power.csv"
    if not p.exists():
        return None
    vals: list[float] = []
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("source") != "gpu" or not row.get("util_gpu_pct"):
                continue
            try:
                t = float(row["t_s"])
                u = float(row["util_gpu_pct"])
            except (TypeError, ValueError):
                continue
            if t < 0 or (duration_s is not None and t > duration_s):
                continue
            vals.append(u)
    return sum(vals) / len(vals) if vals else None


def energy_columns(summary: dict[str, Any], run_dir: Path, out_tokens: int, all_tokens: int, workflows: int) -> dict[str, Any]:
    """Energy and power figures of one run, from energy.json as the energy layer writes it
    (`run` and `baseline` windows with per-domain joules and CPU seconds)."""
    doc = summary.get("energy")
    if doc is None and (run_dir / "energy.json").exists():
        try:
            doc = orjson.loads((run_dir / "energy.json").read_bytes())
        except orjson.JSONDecodeError:
            doc = None
    cols: dict[str, Any] = {
        "energy_gpu_j": None, "energy_cpu_j": None, "energy_dram_j": None, "energy_j": None, "energy_domains": None,
        "energy_net_j": None, "j_per_output_token": None, "j_per_token": None, "j_per_workflow": None,
        "gpu_j_per_output_token": None, "avg_power_w": None, "avg_power_gpu_w": None, "gpu_util_pct": None,
        "steady_j_per_output_token": None, "steady_avg_power_w": None,
        "engine_cpu_s": None, "harness_cpu_s": None, "engine_cpu_ms_per_output_token": None, "engine_cpu_s_per_workflow": None,
        "energy_status": None,
    }
    if not isinstance(doc, dict):
        return cols
    cols["energy_status"] = doc.get("status")
    run = doc.get("run") or {}
    dur = run.get("duration_s")
    win = (doc.get("windows") or {}).get("run")
    if isinstance(win, dict) and isinstance(win.get("domains"), dict):
        # finalised by the energy layer (mrw.analysis.energy.finalize): use its numbers
        doms = win["domains"]
        for dom in ("gpu", "cpu", "dram"):
            v = (doms.get(dom) or {}).get("gross_j")
            cols[f"energy_{dom}_j"] = float(v) if isinstance(v, (int, float)) else None
        allw = win.get("all") or {}
        if isinstance(allw.get("gross_j"), (int, float)):
            cols["energy_j"] = float(allw["gross_j"])
            cols["energy_domains"] = "+".join(allw.get("domains") or [])
            cols["energy_net_j"] = allw.get("net_j")
            cols["j_per_output_token"] = _div(cols["energy_j"], out_tokens)
            cols["j_per_token"] = _div(cols["energy_j"], all_tokens)
            cols["j_per_workflow"] = _div(cols["energy_j"], workflows)
            cols["avg_power_w"] = allw.get("avg_power_w")
        g = doms.get("gpu") or {}
        cols["gpu_j_per_output_token"] = _div(g.get("gross_j"), out_tokens)
        cols["avg_power_gpu_w"] = g.get("avg_power_w")
        steady = (doc.get("windows") or {}).get("steady") or {}
        sa = steady.get("all") or {}
        cols["steady_j_per_output_token"] = sa.get("j_per_output_token") if steady.get("available") else None
        cols["steady_avg_power_w"] = sa.get("avg_power_w") if steady.get("available") else None
        dur = win.get("duration_s", dur)
    else:
        # raw meter output (not finalised): counter differences over the run window
        ej = run.get("energy_j") or {}
        for dom in ("gpu", "cpu", "dram"):
            v = ej.get(dom)
            cols[f"energy_{dom}_j"] = float(v) if isinstance(v, (int, float)) else None
        measured = [d for d in ("gpu", "cpu", "dram") if cols[f"energy_{d}_j"] is not None]
        if measured:
            total = sum(cols[f"energy_{d}_j"] for d in measured)
            cols["energy_j"] = total
            cols["energy_domains"] = "+".join(measured)
            cols["j_per_output_token"] = _div(total, out_tokens)
            cols["j_per_token"] = _div(total, all_tokens)
            cols["j_per_workflow"] = _div(total, workflows)
            cols["avg_power_w"] = _div(total, dur)
            base = (doc.get("baseline") or {}).get("avg_power_w") or {}
            if dur and all(isinstance(base.get(d), (int, float)) for d in measured):
                cols["energy_net_j"] = total - sum(base[d] for d in measured) * dur
        if cols["energy_gpu_j"] is not None:
            cols["gpu_j_per_output_token"] = _div(cols["energy_gpu_j"], out_tokens)
            cols["avg_power_gpu_w"] = _div(cols["energy_gpu_j"], dur)
    cpu_s = run.get("cpu_s") or {}
    if isinstance(cpu_s.get("engine_cpu"), (int, float)):
        cols["engine_cpu_s"] = float(cpu_s["engine_cpu"])
        v = _div(cols["engine_cpu_s"], out_tokens)
        cols["engine_cpu_ms_per_output_token"] = v * 1000 if v is not None else None
        cols["engine_cpu_s_per_workflow"] = _div(cols["engine_cpu_s"], workflows)
    if isinstance(cpu_s.get("harness_cpu"), (int, float)):
        cols["harness_cpu_s"] = float(cpu_s["harness_cpu"])
    cols["gpu_util_pct"] = gpu_utilisation(run_dir, dur)
    return cols


def run_row(run_dir: str | os.PathLike, *, refresh: bool = True) -> dict[str, Any]:
    """One run directory as a flat row: knobs (point.json when in a sweep) and metrics."""
    d = Path(run_dir)
    s = load_summary(d, refresh=refresh)
    point: dict[str, Any] = {}
    if (d / "point.json").exists():
        point = orjson.loads((d / "point.json").read_bytes())
    knobs = point.get("knobs") or {}
    rk = s.get("knobs") or {}
    lat = s.get("latency") or {}
    wf = s.get("workflows") or {}
    cp = wf.get("critical_path_mean") or {}
    rq = s.get("requests") or {}
    tok = s.get("tokens") or {}
    em = s.get("engine_metrics") or {}
    th = s.get("throughput") or {}
    out_tokens = int(tok.get("output") or 0)
    in_tokens = int(tok.get("input") or 0)
    n_wf = int(wf.get("complete") or 0)
    row: dict[str, Any] = {
        "point": point.get("name") or d.name,
        "run_dir": str(d),
        "trace": _get(point, "trace", "label") or Path(str(_get(s, "trace", "path") or d.name)).name,
        "workload": _get(s, "trace", "workload"),
        "engine": point.get("engine") or _get(s, "engine", "engine"),
        "batch": knobs.get("batch", rk.get("max_num_seqs")),
        "prefix_caching": knobs.get("prefix_caching", rk.get("prefix_caching")),
        "max_model_len": knobs.get("max_model_len", rk.get("max_model_len")),
        "cap_w": knobs.get("cap_w", rk.get("cap_w")),
        "cap_effective_w": knobs.get("cap_effective_w"),
        "out_scale": knobs.get("out_scale", 1.0),
        "in_scale": knobs.get("in_scale", 1.0),
        "repeat": point.get("repeat", 1),
        "status": s.get("status"),
        "trace_sha256": _get(s, "trace", "sha256"),
        "requests": rq.get("total"),
        "requests_ok": rq.get("ok"),
        "requests_failed": (rq.get("failed") or 0) + (rq.get("skipped") or 0) + (rq.get("not_finished") or 0),
        "workflows": wf.get("count"),
        "workflows_complete": n_wf,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "output_tokens_per_request": _div(out_tokens, rq.get("ok")),
        "output_tokens_per_workflow": _div(out_tokens, n_wf),
        "duration_s": s.get("duration_s"),
        "throughput_rps": th.get("requests_per_s"),
        "throughput_out_tok_s": th.get("output_tokens_per_s"),
        "throughput_tok_s": th.get("total_tokens_per_s"),
    }
    for name, key in (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2e", "e2e_s")):
        st = lat.get(key) or {}
        for q in ("mean", "p50", "p90", "p99"):
            row[f"{name}_{q}_s"] = st.get(q)
    ms = wf.get("makespan_s") or {}
    for q in ("mean", "p50", "p90", "max"):
        row[f"makespan_{q}_s"] = ms.get(q)
    row["cp_llm_s"] = cp.get("llm_s")
    row["cp_ttft_s"] = cp.get("llm_ttft_s")
    row["cp_wait_s"] = cp.get("wait_s")
    row["cp_delay_s"] = cp.get("delay_s")
    row["prefix_cache_hit_rate"] = em.get("prefix_cache_hit_rate")
    row["engine_queue_time_mean_s"] = em.get("engine_queue_time_mean_s")
    row["running_mean"] = _get(em, "num_requests_running", "mean")
    row.update(energy_columns(s, d, out_tokens, in_tokens + out_tokens, n_wf))
    return row


# ---------------------------------------------------------------------------- a sweep


def sweep_run_dirs(root: str | os.PathLike) -> list[Path]:
    """The run directories of a sweep, in the manifest's order (then any others under runs/)."""
    from mrw.replay.sweep import MANIFEST, RUNS, read_manifest

    r = Path(root)
    if not (r / MANIFEST).exists():
        raise MrwError(f"{r}: not a sweep directory (no {MANIFEST})")
    doc = read_manifest(r)
    ordered = [r / p["run_dir"] for p in doc.get("points", [])]
    extra = sorted(p for p in (r / RUNS).glob("*") if p.is_dir() and p not in ordered) if (r / RUNS).exists() else []
    return [p for p in ordered + extra if (p / "run.json").exists()]


def sweep_rows(root: str | os.PathLike, *, refresh: bool = True, include_unfinished: bool = False) -> list[dict[str, Any]]:
    rows = []
    for d in sweep_run_dirs(root):
        row = run_row(d, refresh=refresh)
        if include_unfinished or row["status"] == "completed":
            rows.append(row)
    return rows


def runs_frame(rows: Iterable[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if df.empty:
        return df
    for c in df.columns:  # metrics are numbers, also when no run measured them (all empty)
        if c not in TEXT_COLUMNS and c not in ("batch", "max_model_len", "repeat", "prefix_caching"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("batch", "max_model_len", "repeat"):
        if c in df:
            df[c] = df[c].astype("Int64")
    if "prefix_caching" in df:
        df["prefix_caching"] = df["prefix_caching"].astype("boolean")
    for c in ("cap_w", "cap_effective_w", "out_scale", "in_scale"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df.copy()  # one block per dtype again after the column-wise conversions


def numeric_metric_columns(df) -> list[str]:
    import pandas as pd

    skip = set(KEY_COLUMNS) | {"repeat", "cap_effective_w"}
    return [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def aggregate(df):
    """Fold repeats: one row per point with `X` (mean), `X_std` (sample std; empty for one
    repeat) and `n`."""
    import pandas as pd

    if df.empty:
        return df
    metrics = numeric_metric_columns(df)
    keys = [k for k in KEY_COLUMNS if k in df.columns]
    df = df.copy()
    g = df.groupby(keys, dropna=False, sort=False)
    mean = g[metrics].mean()
    std = g[metrics].std(ddof=1).add_suffix("_std")
    n = g.size().rename("n")
    first = g[[c for c in ("cap_effective_w", "energy_domains", "energy_status", "status") if c in df]].first()
    points = g["point"].agg(lambda s: _strip_repeat(s.iloc[0])).rename("point")
    out = pd.concat([points, n, first, mean, std], axis=1).reset_index()
    order = ["point", *keys, "n", *[c for c in first.columns]]
    for m in metrics:
        order += [m, f"{m}_std"]
    return out[order].copy()


def _strip_repeat(name: str) -> str:
    head, sep, tail = name.rpartition("-r")
    return head if sep and tail.isdigit() else name


def write_tables(root: str | os.PathLike, runs_df, agg_df) -> list[Path]:
    out = Path(root) / ANALYSIS_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in (("sweep_runs", runs_df), ("sweep", agg_df)):
        csv_p = out / f"{name}.csv"
        df.to_csv(csv_p, index=False, na_rep="")
        paths.append(csv_p)
        try:
            pq = out / f"{name}.parquet"
            df.to_parquet(pq, index=False)
            paths.append(pq)
        except ImportError as e:  # pyarrow missing: the CSV still stands
            raise MrwError(f"writing Parquet needs pyarrow ({e}); pip install 'mrw[analysis]'") from None
    return paths


# ---------------------------------------------------------------------------- printing


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    try:
        import pandas as pd

        if v is pd.NA:
            return "n/a"
    except ImportError:
        pass
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def _pm(row: Any, col: str, scale: float = 1.0) -> str:
    v = row.get(col)
    sd = row.get(f"{col}_std")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    s = _fmt(v * scale)
    if sd is not None and not (isinstance(sd, float) and math.isnan(sd)):
        s += f" ± {_fmt(sd * scale)}"
    return s


PRINT_COLUMNS = [
    ("makespan s", "makespan_mean_s", 1.0),
    ("E2E p90 s", "e2e_p90_s", 1.0),
    ("TTFT p90 ms", "ttft_p90_s", 1000.0),
    ("out tok/s", "throughput_out_tok_s", 1.0),
    ("J/out tok", "j_per_output_token", 1.0),
    ("J/workflow", "j_per_workflow", 1.0),
    ("avg W", "avg_power_w", 1.0),
    ("GPU util %", "gpu_util_pct", 1.0),
    ("engine CPU ms/tok", "engine_cpu_ms_per_output_token", 1.0),
]


def print_table(agg_df, console: Any, title: str = "sweep") -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("point", no_wrap=True)
    t.add_column("n", justify="right")
    # a column nothing measured (energy on a machine without meters) is left out, and said so
    cols = [c for c in PRINT_COLUMNS if c[1] in agg_df.columns and agg_df[c[1]].notna().any()]
    missing = [label for label, col, _ in PRINT_COLUMNS if (label, col, _) not in cols]
    for label, _, _ in cols:
        t.add_column(label, justify="right")
    for _, r in agg_df.iterrows():
        rd = r.to_dict()
        t.add_row(str(rd["point"]), str(rd["n"]), *[_pm(rd, c, sc) for _, c, sc in cols])
    console.print(t)
    if missing:
        console.print(f"not measured in any run: {', '.join(missing)}", style="dim", highlight=False, soft_wrap=True)


def analyze_sweep(root: str | os.PathLike, console: Any = None, *, figures: bool = True, refresh: bool = True) -> dict[str, Any]:
    """Table (CSV + Parquet + printed) and figures of a sweep. Returns what was written."""
    from mrw.replay.run import first_call_error
    from mrw.replay.sweep import read_manifest

    r = Path(root)
    man = read_manifest(r)
    rows = sweep_rows(r, refresh=refresh)
    if not rows:
        raise MrwError(f"{r}: no completed point yet; run the sweep (mrw sweep ... --out {r}) first")
    df = runs_frame(rows)
    agg = aggregate(df)
    paths = write_tables(r, df, agg)
    result: dict[str, Any] = {"tables": [str(p) for p in paths], "runs": len(df), "points": len(agg), "figures": []}
    c = man.get("counts", {})
    if console is not None:
        print_table(agg, console, title=f"{r}: {len(agg)} point(s), {len(df)} run(s) completed of {c.get('total', '?')}")
    # A run whose calls failed (an engine's 400 for a prompt over its context, a timeout, ...)
    # measured a different workload from the one asked for: it stays in the tables, with
    # requests_failed, but no figure draws it as that configuration.
    bad = df[df["requests_failed"] > 0]
    result["runs_with_failed_calls"] = [str(x) for x in bad["point"]]
    if console is not None:
        for _, row in bad.iterrows():
            console.print(f"warning: {row['point']}: {int(row['requests_failed'])} of {int(row['requests'])} calls failed "
                          f"({first_call_error(row['run_dir'])}); left out of the figures",
                          style="yellow", highlight=False, soft_wrap=True)
    if figures:
        from mrw.analysis.figures import make_figures

        fig_df = df.drop(bad.index) if len(bad) else df
        if len(fig_df) == 0:
            raise MrwError(f"{r}: every completed run had failed calls: tables written to {r / 'analysis'}, no figure "
                           "drawn (the warnings above name the cause)")
        figs = make_figures(r, fig_df, aggregate(fig_df) if len(bad) else agg)
        result["figures"] = [f.to_dict() for f in figs]
        if console is not None:
            skipped_runs: dict[tuple[str, str], int] = {}
            for f in figs:
                if f.path:
                    console.print(f"figure: {f.path}" + (f"  [{f.note}]" if f.note else ""), highlight=False, soft_wrap=True)
                elif ":" in f.name:  # a per-run figure: one line per kind and reason, not one per run
                    key = (f.name.split(":")[0], str(f.reason))
                    skipped_runs[key] = skipped_runs.get(key, 0) + 1
                else:
                    console.print(f"figure {f.name} skipped: {f.reason}", style="yellow", highlight=False, soft_wrap=True)
            for (kind, reason), n in skipped_runs.items():
                console.print(f"figure {kind} skipped for {n} run(s): {reason}", style="yellow", highlight=False, soft_wrap=True)
    if console is not None:
        for p in paths:
            console.print(f"table: {p}", highlight=False)
    return result

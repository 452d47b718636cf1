"""`mrw compare RUN_A RUN_B`: two runs side by side, with absolute and relative differences.

Made for the study's engine comparison (Parrot against vLLM on one trace), it works for any
two run directories: the same flat metrics as a sweep table row (latency percentiles,
makespan, throughput, energy), B − A and (B − A) / A. A metric one run did not measure is
"n/a" and gets no difference. Warnings say what makes the comparison less than like for like:
different traces (by sha256; scaled variants of one source are named as such), unfinished
runs, and fidelity gaps (an engine without streaming has no TTFT, for instance).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mrw.analysis.sweep_table import run_row

# (label, column, scale, unit, better): better is "lower", "higher" or "" (neither).
METRICS: list[tuple[str, str, float, str, str]] = [
    ("requests ok", "requests_ok", 1, "", "higher"),
    ("requests failed/unfinished", "requests_failed", 1, "", "lower"),
    ("duration", "duration_s", 1, "s", "lower"),
    ("throughput", "throughput_rps", 1, "req/s", "higher"),
    ("throughput, output", "throughput_out_tok_s", 1, "tok/s", "higher"),
    ("throughput, all tokens", "throughput_tok_s", 1, "tok/s", "higher"),
    ("TTFT p50", "ttft_p50_s", 1000, "ms", "lower"),
    ("TTFT p90", "ttft_p90_s", 1000, "ms", "lower"),
    ("TTFT p99", "ttft_p99_s", 1000, "ms", "lower"),
    ("TPOT p50", "tpot_p50_s", 1000, "ms", "lower"),
    ("TPOT p90", "tpot_p90_s", 1000, "ms", "lower"),
    ("E2E p50", "e2e_p50_s", 1000, "ms", "lower"),
    ("E2E p90", "e2e_p90_s", 1000, "ms", "lower"),
    ("E2E p99", "e2e_p99_s", 1000, "ms", "lower"),
    ("makespan mean", "makespan_mean_s", 1, "s", "lower"),
    ("makespan p90", "makespan_p90_s", 1, "s", "lower"),
    ("makespan max", "makespan_max_s", 1, "s", "lower"),
    ("critical path: LLM", "cp_llm_s", 1, "s", "lower"),
    ("critical path: wait", "cp_wait_s", 1, "s", ""),
    ("critical path: dispatch delay", "cp_delay_s", 1, "s", "lower"),
    ("prefix-cache hit rate", "prefix_cache_hit_rate", 100, "%", "higher"),
    ("energy", "energy_j", 1, "J", "lower"),
    ("energy, net of idle", "energy_net_j", 1, "J", "lower"),
    ("energy, GPU", "energy_gpu_j", 1, "J", "lower"),
    ("J per output token", "j_per_output_token", 1, "J", "lower"),
    ("J per token", "j_per_token", 1, "J", "lower"),
    ("J per workflow", "j_per_workflow", 1, "J", "lower"),
    ("average power", "avg_power_w", 1, "W", ""),
    ("GPU utilisation", "gpu_util_pct", 1, "%", ""),
    ("engine CPU time", "engine_cpu_s", 1, "s", "lower"),
    ("engine CPU per output token", "engine_cpu_ms_per_output_token", 1, "ms", "lower"),
]


@dataclass(slots=True)
class Comparison:
    a: dict[str, Any]
    b: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a["run_dir"], "b": self.b["run_dir"], "metrics": self.rows, "warnings": self.warnings}


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _trace_desc(run_dir: Path) -> tuple[str | None, str | None, str]:
    """(sha256 of the replayed trace, sha256 of its source before scaling, description)."""
    meta = orjson.loads((run_dir / "run.json").read_bytes())
    tr = meta.get("trace") or {}
    sha = tr.get("sha256")
    src, desc = sha, Path(str(tr.get("path") or "?")).name
    p = Path(str(tr.get("path") or ""))
    if p.is_file():
        try:
            from mrw.trace import load

            t = load(p, validate=False)
            x = (t.header.extra or {}).get("transform")
            if x:
                src = x.get("source_sha256") or sha
                desc += f" (out×{x.get('out_scale', 1):g}, in×{x.get('in_scale', 1):g} of {str(src)[:12]})"
        except Exception:
            pass
    return sha, src, desc


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, *, refresh: bool = True) -> Comparison:
    a_dir, b_dir = Path(run_a), Path(run_b)
    a, b = run_row(a_dir, refresh=refresh), run_row(b_dir, refresh=refresh)
    cmp = Comparison(a, b)
    sa, srca, da = _trace_desc(a_dir)
    sb, srcb, db = _trace_desc(b_dir)
    if sa != sb:
        if srca is not None and srca == srcb:
            cmp.warnings.append(f"the runs replayed different length-scalings of one trace: A {da}, B {db}")
        else:
            cmp.warnings.append(
                f"the runs replayed different traces (A {da} sha256 {str(sa)[:12]}, B {db} sha256 {str(sb)[:12]}): "
                "differences mix the workload with the engine and knobs"
            )
    for tag, r in (("A", a), ("B", b)):
        if r.get("status") != "completed":
            cmp.warnings.append(f"run {tag} ({r['run_dir']}) is {r.get('status')}: its figures cover only what finished")
    for tag, d in (("A", a_dir), ("B", b_dir)):
        fid = orjson.loads((d / "run.json").read_bytes()).get("fidelity") or {}
        for n in fid.get("notes") or []:
            cmp.warnings.append(f"run {tag}: {n}")
    if (a.get("energy_domains") or b.get("energy_domains")) and a.get("energy_domains") != b.get("energy_domains"):
        cmp.warnings.append(
            f"energy covers different domains (A {a.get('energy_domains') or 'none'}, B {b.get('energy_domains') or 'none'}): "
            "energy totals are not comparable"
        )
    for label, col, scale, unit, better in METRICS:
        va, vb = _num(a.get(col)), _num(b.get(col))
        if va is None and vb is None:
            continue
        row: dict[str, Any] = {"metric": label, "column": col, "unit": unit, "better": better,
                               "a": va * scale if va is not None else None, "b": vb * scale if vb is not None else None,
                               "diff": None, "rel": None}
        if va is not None and vb is not None:
            row["diff"] = (vb - va) * scale
            row["rel"] = (vb - va) / abs(va) if va != 0 else None
        cmp.rows.append(row)
    return cmp


def _f(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _knobs(r: dict[str, Any]) -> str:
    parts = [str(r.get("engine") or "?")]
    for k, lab in (("batch", "batch"), ("cap_w", "cap"), ("out_scale", "out×"), ("in_scale", "in×")):
        v = r.get(k)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{lab} {v:g}" if isinstance(v, float) else f"{lab} {v}")
    return ", ".join(parts)


def print_comparison(cmp: Comparison, console: Any) -> None:
    from rich.table import Table

    a, b = cmp.a, cmp.b
    t = Table(title=f"A = {a['run_dir']} ({_knobs(a)})\nB = {b['run_dir']} ({_knobs(b)})", title_justify="left")
    for col, j in (("metric", "left"), ("A", "right"), ("B", "right"), ("B − A", "right"), ("(B − A) / A", "right")):
        t.add_column(col, justify=j)  # type: ignore[arg-type]
    for r in cmp.rows:
        rel = r["rel"]
        rel_s = "n/a" if rel is None else f"{rel:+.1%}"
        style = ""
        if rel is not None and r["better"] and abs(rel) >= 0.005:
            good = (rel < 0) == (r["better"] == "lower")
            style = "green" if good else "red"
        unit = f" {r['unit']}" if r["unit"] else ""
        diff = "n/a" if r["diff"] is None else (("+" if r["diff"] > 0 else "") + _f(r["diff"]))
        t.add_row(f"{r['metric']}{unit}", _f(r["a"]), _f(r["b"]), diff, f"[{style}]{rel_s}[/]" if style else rel_s)
    console.print(t)
    for w in cmp.warnings:
        console.print(f"warning: {w}", style="yellow", highlight=False, soft_wrap=True)

"""`mrw analyze`: one run directory, or several side by side.

Reads only the run directory (run.json, requests.jsonl, metrics.jsonl, energy.json): never
the trace and never an engine, so a run copied to another machine, or one cut short by
Ctrl-C or an engine death, is analysed the same way. Writes `summary.json` next to them.

Per workflow, the critical path is followed backwards from its last call to end: each step
goes to the dependency that ended last (the one that held the call back). Along that chain
the makespan (arrival to last end) splits exactly into
  - LLM time   : issue to end of each call (of which TTFT: engine queueing + prefill),
  - wait       : the recorded tool/think waits the schedule applied,
  - delay      : the rest, i.e. the replayer's dispatch lateness beyond the wait
                 (or, for engines that do not report issue times, nothing: all goes to LLM).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import orjson

from mrw.errors import MrwError
from mrw.replay import run as runmod

QUANTILES = (0.5, 0.9, 0.99)


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_xs:
        return math.nan
    k = (len(sorted_xs) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def stats(xs: Iterable[float | None]) -> dict[str, float | int | None]:
    v = sorted(x for x in xs if x is not None)
    if not v:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "n": len(v),
        "mean": sum(v) / len(v),
        **{f"p{round(q * 100)}": percentile(v, q) for q in QUANTILES},
        "max": v[-1],
    }


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _tpot(r: dict) -> float | None:
    n = r.get("output_tokens")
    d = _sub(r.get("t_end"), r.get("t_first_token"))
    return d / (n - 1) if d is not None and n and n > 1 else None


def classify(r: dict) -> str:
    """ok | failed | skipped (a dependency failed) | not_finished (run stopped early)."""
    if r.get("ok"):
        return "ok"
    err = r.get("error") or ""
    if err.startswith("not finished"):
        return "not_finished"
    if err.startswith("not issued"):
        return "skipped"
    return "failed"


# ---------------------------------------------------------------------------- workflows


def critical_path(calls: list[dict], t_arrival: float | None) -> dict[str, Any] | None:
    """Critical-path breakdown of one workflow's calls (see module docstring)."""
    done = [c for c in calls if c.get("ok") and c.get("t_end") is not None]
    if not done or len(done) != len(calls):
        return None
    by_id = {c["call_id"]: c for c in calls}
    last = max(done, key=lambda c: c["t_end"])
    chain = []
    cur: dict | None = last
    while cur is not None:
        chain.append(cur)
        deps = [by_id[d] for d in cur.get("deps") or () if d in by_id]
        cur = max(deps, key=lambda c: c["t_end"]) if deps else None
    chain.reverse()
    start = t_arrival if t_arrival is not None else (chain[0].get("t_issue") or chain[0]["t_end"])
    llm = ttft = wait = delay = 0.0
    prev_end = start
    for c in chain:
        gap_total = c["t_end"] - prev_end
        t_issue = c.get("t_issue")
        if t_issue is None:
            llm += gap_total
        else:
            w = c.get("wait_s") or 0.0
            gap = t_issue - prev_end
            wait += min(w, max(gap, 0.0))
            delay += gap - min(w, max(gap, 0.0))
            llm += c["t_end"] - t_issue
            if c.get("t_first_token") is not None:
                ttft += c["t_first_token"] - t_issue
        prev_end = c["t_end"]
    return {
        "calls": [c["call_id"] for c in chain],
        "length_s": last["t_end"] - start,
        "llm_s": llm,
        "llm_ttft_s": ttft,
        "wait_s": wait,
        "delay_s": delay,
    }


def workflow_rows(rows: list[dict]) -> list[dict[str, Any]]:
    by_wf: dict[str, list[dict]] = {}
    for r in rows:
        by_wf.setdefault(r["workflow_id"], []).append(r)
    out = []
    for wid, calls in by_wf.items():
        arrivals = [c["t_arrival"] for c in calls if c.get("t_arrival") is not None]
        t_arr = min(arrivals) if arrivals else None
        ok = sum(1 for c in calls if c.get("ok"))
        ends = [c["t_end"] for c in calls if c.get("t_end") is not None]
        complete = ok == len(calls)
        start = t_arr if t_arr is not None else min((c["t_issue"] for c in calls if c.get("t_issue") is not None), default=None)
        out.append(
            {
                "id": wid,
                "calls": len(calls),
                "ok": ok,
                "complete": complete,
                "t_arrival": t_arr,
                "makespan_s": (max(ends) - start) if complete and ends and start is not None else None,
                "critical_path": critical_path(calls, t_arr) if complete else None,
            }
        )
    return out


# ---------------------------------------------------------------------------- engine metrics


def engine_metrics(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    pts = []
    with open(path, "rb") as f:
        for line in f:
            try:
                pts.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    if not pts:
        return None

    def col(k: str) -> list[float]:
        return [p[k] for p in pts if k in p]

    def delta(k: str) -> float | None:
        v = col(k)
        return v[-1] - v[0] if len(v) >= 2 else None

    out: dict[str, Any] = {"samples": len(pts), "span_s": pts[-1]["t"] - pts[0]["t"]}
    for k in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        v = col(k)
        if v:
            out[k] = {"mean": sum(v) / len(v), "max": max(v)}
    hits, queries = delta("prefix_cache_hits_total"), delta("prefix_cache_queries_total")
    if hits is not None and queries:
        out["prefix_cache_hit_rate"] = hits / queries
    qs, qn = delta("request_queue_time_seconds_sum"), delta("request_queue_time_seconds_count")
    if qs is not None and qn:
        out["engine_queue_time_mean_s"] = qs / qn
    pre = delta("num_preemptions_total")
    if pre is not None:
        out["preemptions"] = pre
    return out


# ---------------------------------------------------------------------------- energy


def energy_section(run_dir: Path) -> dict[str, Any] | None:
    """energy.json as written by the energy layer (meters + attribution), or None when the
    run was not metered. Analysis passes it through and prints its scalar headline figures."""
    p = run_dir / runmod.ENERGY
    if not p.exists():
        return None
    try:
        doc = orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError as e:
        return {"error": f"energy.json unreadable ({e})"}
    return doc if isinstance(doc, dict) else {"value": doc}


def energy_headline(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    """Scalar figures to print: the 'summary' block if there is one, else top-level scalars."""
    src = doc.get("summary") if isinstance(doc.get("summary"), dict) else doc
    return [(k, v) for k, v in src.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]


# ---------------------------------------------------------------------------- summary


def summarize(run_dir: str | os.PathLike, *, write: bool = True) -> dict[str, Any]:
    d = Path(run_dir)
    meta, rows = runmod.read_run(d)
    kinds = {"ok": 0, "failed": 0, "skipped": 0, "not_finished": 0}
    for r in rows:
        kinds[classify(r)] += 1
    ok = [r for r in rows if r.get("ok")]
    t_starts = [r.get("t_arrival") if r.get("t_arrival") is not None else r.get("t_issue") for r in rows]
    t_starts = [t for t in t_starts if t is not None]
    t_ends = [r["t_end"] for r in ok if r.get("t_end") is not None]
    span = (max(t_ends) - min(t_starts)) if t_ends and t_starts else None
    out_tok = sum(r.get("output_tokens") or 0 for r in ok)
    in_tok = sum(r.get("input_tokens") or 0 for r in ok)
    itl: list[float] = []
    for r in ok:
        tt = r.get("token_times")
        if tt and len(tt) > 1:
            itl.extend(b - a for a, b in zip(tt, tt[1:]))
    mism_out = [r for r in ok if r.get("output_tokens") is not None and r.get("expected_output_tokens") is not None and r["output_tokens"] != r["expected_output_tokens"]]
    mism_in = [r for r in ok if r.get("input_tokens") is not None and r.get("expected_input_tokens") is not None and r["input_tokens"] != r["expected_input_tokens"]]
    wfs = workflow_rows(rows)
    cps = [w["critical_path"] for w in wfs if w["critical_path"]]
    counted = [r for r in ok if r.get("input_tokens") is not None and r.get("expected_input_tokens") is not None]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    summary: dict[str, Any] = {
        "run_dir": str(d),
        "status": meta.get("status"),
        "error": meta.get("error"),
        "engine": meta.get("engine", {}),
        "trace": {k: meta.get("trace", {}).get(k) for k in ("path", "sha256", "workload", "workflows", "calls")},
        "knobs": meta.get("knobs", {}),
        "options": meta.get("options", {}),
        "started": meta.get("started"),
        "ended": meta.get("ended"),
        "fidelity": meta.get("fidelity"),
        "requests": {"total": meta.get("trace", {}).get("calls", len(rows)), "recorded": len(rows), **kinds},
        "duration_s": span,
        "tokens": {"input": in_tok, "output": out_tok},
        "throughput": {
            "requests_per_s": len(ok) / span if span else None,
            "output_tokens_per_s": out_tok / span if span else None,
            "total_tokens_per_s": (in_tok + out_tok) / span if span else None,
        },
        "latency": {
            "ttft_s": stats(_sub(r.get("t_first_token"), r.get("t_issue")) for r in ok),
            "tpot_s": stats(_tpot(r) for r in ok),
            "itl_s": stats(itl),
            "e2e_s": stats(_sub(r.get("t_end"), r.get("t_issue")) for r in ok),
            "issue_lateness_s": stats(_sub(r.get("t_issue"), r.get("t_scheduled")) for r in rows if r.get("t_issue") is not None),
        },
        "token_check": {
            "checked": len(ok),
            "output_mismatch": len(mism_out),
            "input_mismatch": len(mism_in),
            "output_examples": [{"call_id": r["call_id"], "expected": r["expected_output_tokens"], "got": r["output_tokens"]} for r in mism_out[:5]],
            "input_examples": [{"call_id": r["call_id"], "expected": r["expected_input_tokens"], "got": r["input_tokens"]} for r in mism_in[:5]],
        },
        "input_lengths": {
            # the replay's mode (run.json `prompts`), and how many prompts reached the engine at
            # exactly their recorded input count (of those with both counts known)
            "mode": (meta.get("prompts") or {}).get("input_lengths") or (meta.get("fidelity") or {}).get("input_lengths"),
            "exact": len(counted) - len(mism_in),
            "checked": len(counted),
            "without_count": len(ok) - len(counted),
        },
        "workflows": {
            "count": len(wfs),
            "complete": sum(1 for w in wfs if w["complete"]),
            "makespan_s": stats(w["makespan_s"] for w in wfs),
            "critical_path_mean": {
                k: mean([c[k] for c in cps]) for k in ("length_s", "llm_s", "llm_ttft_s", "wait_s", "delay_s")
            }
            if cps
            else None,
        },
        "per_workflow": wfs,
        "engine_metrics": engine_metrics(d / runmod.METRICS),
        "energy": energy_section(d),
    }
    if write:
        try:
            runmod.write_atomic(d / runmod.SUMMARY, orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        except OSError as e:
            raise MrwError(f"{d}: cannot write {runmod.SUMMARY} ({e}); use --no-write on a read-only run") from None
    return summary


# ---------------------------------------------------------------------------- printing


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.1f}"


def _s(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _label(s: dict) -> str:
    return Path(s["run_dir"]).name


def _rows(s: dict) -> list[tuple[str, str]]:
    """(metric, value) pairs shared by the single-run and side-by-side views."""
    rq, th, lat, wf = s["requests"], s["throughput"], s["latency"], s["workflows"]
    eng = s["engine"]
    rows: list[tuple[str, str]] = [
        ("status", str(s["status"]) + (f" ({s['error']})" if s.get("error") and s["status"] != "completed" else "")),
        ("engine", " ".join(str(x) for x in (eng.get("engine"), eng.get("model"), eng.get("server_version")) if x)),
        ("knobs", ", ".join(f"{k}={v}" for k, v in s["knobs"].items()) or "-"),
        ("requests ok / total", f"{rq['ok']} / {rq['total']}"),
        ("failed / skipped / not finished", f"{rq['failed']} / {rq['skipped']} / {rq['not_finished']}"),
        ("duration s", _s(s["duration_s"])),
        ("throughput req/s", _s(th["requests_per_s"], 3)),
        ("throughput output tok/s", _s(th["output_tokens_per_s"], 1)),
        ("throughput total tok/s", _s(th["total_tokens_per_s"], 1)),
    ]
    for name, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("ITL", "itl_s"), ("E2E", "e2e_s"), ("issue lateness", "issue_lateness_s")):
        st = lat[key]
        rows.append((f"{name} ms mean / p50 / p90 / p99", " / ".join(_ms(st[k]) for k in ("mean", "p50", "p90", "p99"))))
    tc = s["token_check"]
    rows.append(("token counts off (output / input)", f"{tc['output_mismatch']} / {tc['input_mismatch']} of {tc['checked']}"))
    il = s.get("input_lengths") or {}
    if il.get("checked") or il.get("mode"):
        mode = f" ({il['mode']} input lengths)" if il.get("mode") else ""
        none = f", {il['without_count']} without a count" if il.get("without_count") else ""
        rows.append(("input tokens as recorded", f"{il['exact']} / {il['checked']}{mode}{none}"))
    rows.append(("workflows complete / total", f"{wf['complete']} / {wf['count']}"))
    ms = wf["makespan_s"]
    rows.append(("makespan s mean / p50 / p90 / max", " / ".join(_s(ms[k]) for k in ("mean", "p50", "p90", "max"))))
    cp = wf["critical_path_mean"]
    if cp:
        L = cp["length_s"] or 1e-12
        rows.append(
            (
                "critical path (mean): LLM / wait / delay",
                f"{cp['llm_s']:.2f} s ({cp['llm_s'] / L:.0%}, TTFT {cp['llm_ttft_s']:.2f}) / "
                f"{cp['wait_s']:.2f} s ({cp['wait_s'] / L:.0%}) / {cp['delay_s']:.3f} s ({cp['delay_s'] / L:.0%})",
            )
        )
    em = s.get("engine_metrics")
    if em:
        parts = []
        if "num_requests_running" in em:
            parts.append(f"running mean {em['num_requests_running']['mean']:.1f} max {em['num_requests_running']['max']:.0f}")
        if "num_requests_waiting" in em:
            parts.append(f"waiting max {em['num_requests_waiting']['max']:.0f}")
        if "kv_cache_usage_perc" in em:
            parts.append(f"KV max {em['kv_cache_usage_perc']['max']:.0%}")
        if "prefix_cache_hit_rate" in em:
            parts.append(f"prefix hits {em['prefix_cache_hit_rate']:.0%}")
        rows.append(("engine metrics", ", ".join(parts) or "-"))
    en = s.get("energy")
    if en is None:
        rows.append(("energy", "not measured"))
    elif "error" in en and len(en) == 1:
        rows.append(("energy", en["error"]))
    else:
        from mrw.analysis.energy import energy_rows

        rows.extend(energy_rows(en))
    fid = s.get("fidelity") or {}
    for n in fid.get("notes", []):
        rows.append(("fidelity", n))
    return rows


def print_summary(s: dict, console: Any, *, show_workflows: bool = False) -> None:
    from rich.table import Table

    t = Table(title=s["run_dir"], show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in _rows(s):
        t.add_row(k, v)
    console.print(t)
    if show_workflows:
        wt = Table("workflow", "calls ok", "makespan s", "critical path", "LLM s", "wait s", "delay s")
        for w in s["per_workflow"]:
            cp = w["critical_path"]
            wt.add_row(
                w["id"],
                f"{w['ok']}/{w['calls']}",
                _s(w["makespan_s"]),
                " > ".join(cp["calls"]) if cp else "-",
                _s(cp["llm_s"]) if cp else "-",
                _s(cp["wait_s"]) if cp else "-",
                _s(cp["delay_s"], 3) if cp else "-",
            )
        console.print(wt)


def print_comparison(sums: list[dict], console: Any) -> None:
    from rich.table import Table

    t = Table("metric", *[_label(s) for s in sums], title="side by side", title_justify="left")
    cols = [dict(_rows(s)) for s in sums]
    keys: list[str] = []
    for s in sums:
        for k, _ in _rows(s):
            if k not in keys and k != "fidelity":
                keys.append(k)
    for k in keys:
        t.add_row(k, *[c.get(k, "-") for c in cols])
    console.print(t)
    for s in sums:
        for n in (s.get("fidelity") or {}).get("notes", []):
            console.print(f"{_label(s)}: fidelity: {n}", highlight=False)

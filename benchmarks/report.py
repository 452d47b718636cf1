"""The markdown docs/performance.md shows, from results files.

    python -m benchmarks.report benchmarks/results/*.json                 # print
    python -m benchmarks.report --into docs/performance.md benchmarks/results/*.json   # update the page

Each file is recognised by its "benchmark" field; the newest of each kind is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.replay_bench import summary, table


def _f(x: Any, nd: int = 2) -> str:
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def replay_section(r: dict) -> str:
    m = r["machine"]
    ceil = r.get("server_ceiling") or {}
    out = [
        f"Run {r['started']}{' (**' + r['label'] + '**)' if r.get('label') else ''}: `{r['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores_logical']} logical cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}, "
        f"node {m['node']}; load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}.",
        "",
        "Tools: " + ", ".join(f"{k} {v.get('version') or ''}".strip() + (f" (not run: {v['unavailable']})" if v.get("unavailable") else "")
                              for k, v in r["tools"].items()) + ".",
        "",
    ]
    if ceil.get("requests_per_s"):
        out += [f"Zero server ceiling (physical limit): **{ceil['requests_per_s']:,.0f} requests/s** with {ceil['tokens']} streamed "
                f"tokens each, {ceil['tool']}, server CPU {_f(ceil.get('server_cpu_s_per_request', 0) * 1e3, 3)} ms/request.", ""]
    out += [table(r), ""]
    s = summary(r)
    out += [] if not s else ["| tool / schedule | highest rate with p99 lateness ≤ 1 ms (/s) | CPU ms/request there | highest rate sustained: achieved ≥ 98%, p50 ≤ 5 ms (/s) | CPU ms/request there |",
            "|---|---|---|---|---|"]
    for k, e in s.items():
        out.append(f"| {k} | {_f(e['max_rate_p99_le_1ms'], 0)} | {_f(e['cpu_ms_per_request_at_max'], 3)} | "
                   f"{_f(e['max_rate_sustained'], 0)} | {_f(e['cpu_ms_per_request_at_sustained'], 3)} |")
    for kind in ("independent", "chains"):
        for measure, label in (("max_rate_p99_le_1ms", "p99 ≤ 1 ms"), ("max_rate_sustained", "sustained")):
            mine = (s.get(f"mrw/{kind}") or {}).get(measure)
            peers = [e[measure] for k, e in s.items() if k.endswith("/" + kind) and not k.startswith("mrw/") and e[measure] is not None]
            if mine is not None and peers:
                out.append(f"\n{kind}, {label}: mrw {mine:g}/s vs best peer {max(peers):g}/s = **{mine / max(peers):.1f}x**.")
            elif mine is not None:
                out.append(f"\n{kind}, {label}: mrw {mine:g}/s; no peer reached the lowest rate tried.")
    for run in r["runs"]:
        if run["schedule"]["kind"] != "mooncake" or run.get("skipped"):
            continue
        la = run["lateness"]
        bp = la.get("burst_position_ms") or {}
        p0, p10 = (bp.get("0") or {}).get("p50"), (bp.get("10") or {}).get("p50")
        p99 = la["all_ms"]["p99"]
        if p0 is not None and p10 is not None and p99 is not None:
            out.append(f"\n{run['schedule']['name']}, {run['tool']}: p99 lateness {p99:.2f} ms (goal ≤ 1 ms: "
                       f"{'met' if p99 <= 1.0 else 'not met'}); burst position 10 − position 0 = {p10 - p0:+.2f} ms "
                       f"(goal ≤ 0.5 ms: {'met' if p10 - p0 <= 0.5 else 'not met'}).")
    return "\n".join(out)


def trace_io_section(r: dict) -> str:
    valid = r["valid"]
    # (results written before the screen child and the GC check were measured lack them)
    child_mb = max(x.get("screen_child_peak_rss_mb") or 0 for x in valid)
    gc_ms = [x["gc_after_s"] * 1e3 for x in valid if "gc_after_s" in x]
    lines = [f"Run {r['started']}: `{r['command']}` (load {r['load_avg'][0]:.2f})", "",
             f"{r['calls']:,} calls, {r['file_mib']:.0f} MiB JSON ({'short texts' if r['text'] else 'text-free, hash_ids'}): "
             f"load + validate + build **{r['best_load_s']:.2f} s** wall, {r.get('best_load_cpu_s', float('nan')):.2f} s CPU (best of {len(valid)}: "
             f"{', '.join(format(x['load_s'], '.2f') for x in valid)} s), peak RSS {r['peak_rss_mb']:.0f} MB"
             + (f" (and {child_mb:.0f} MB in the screen's child process)" if child_mb else "")
             + (f"; a full GC right after the load: {max(gc_ms):.0f} ms at most" if gc_ms else "")
             + "."]
    if r.get("phases"):
        lines[-1] += " Phases, wall s (CPU s of the loading process): " + ", ".join(
            f"{k} {x['s']:.2f} ({x['cpu_s']:.2f})" for k, x in r["phases"].items()) + "."
    for kind, b in (r.get("invalid") or {}).items():
        lines.append(f"Invalid copy ({kind} problems planted): refused in {b['load_s']:.2f} s ({b.get('load_cpu_s', float('nan')):.2f} s CPU) listing {b['n_problems']} problems, "
                     f"every planted one with its JSON path: {b['all_found']}.")
    return "\n".join(lines)


def meter_section(r: dict) -> str:
    on = [k for k, v in r["meters"].items() if v.get("available")]
    off = {k: v.get("reason") for k, v in r["meters"].items() if not v.get("available")}
    s = r["sampler"]
    txt = (f"Run {r['started']}: `{r['command']}` (load {r['load_avg'][0]:.2f})\n\n"
           f"Sampler at {r['hz']:g} Hz with {', '.join(on)} ({r['nvml']}): **{r['sampler_cpu_pct_of_one_core']:.3f}% of one core** "
           f"(goal ≤ {r['goal_pct']}%); tick cost mean {s.get('tick_cost_mean_ms', 0):.3f} ms, max {s.get('tick_cost_max_ms', 0):.2f} ms; "
           f"period median {s.get('period_median_s', 0) * 1e3:.1f} ms, p99 {s.get('period_p99_s', 0) * 1e3:.1f} ms.")
    if off:
        txt += "\nNot measured here: " + "; ".join(f"{k}: {v}" for k, v in off.items())
    return txt


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                 description="Markdown tables of the newest result of each benchmark among FILES.")
    ap.add_argument("files", nargs="+", type=Path, help="benchmarks/results/*.json")
    ap.add_argument("--into", type=Path, help=f"replace the {BEGIN} ... {END} section of this file (else print)")
    a = ap.parse_args(argv)
    into = a.into
    newest: dict[str, tuple[str, dict]] = {}
    for p in a.files:
        d = orjson.loads(p.read_bytes())
        k = d.get("benchmark")
        if k and (k not in newest or d.get("started", "") > newest[k][0]):
            newest[k] = (d.get("started", ""), d)
    parts = []
    for k, title, fn in (("replay", "Replay: dispatch lateness and client overhead", replay_section),
                         ("trace_io", "Trace I/O", trace_io_section), ("meter_overhead", "Meter overhead", meter_section)):
        if k in newest:
            parts.append(f"### {title}\n\n{fn(newest[k][1])}\n")
    md = "\n".join(parts)
    if into is None:
        print(md)
        return 0
    doc = into.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{into}: no {BEGIN} ... {END} section to replace")
    head, rest = doc.split(BEGIN, 1)
    into.write_text(head + BEGIN + "\n" + md + "\n" + END + rest.split(END, 1)[1])
    print(f"{into}: results section replaced")
    return 0


if __name__ == "__main__":
    sys.exit(main())

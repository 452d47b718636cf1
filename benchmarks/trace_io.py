"""Trace I/O benchmark: write a synthetic 1M-call trace, then load + validate it.

    python -m benchmarks.trace_io                      # 1,000,000 calls, text-free (hash_ids)
    python -m benchmarks.trace_io --text               # short texts with refs instead
    python -m benchmarks.trace_io --calls 100000       # smaller

Each measurement runs `mrw.trace.load` (read, decode into the msgspec model with the
structure check, semantic checks: exactly what `mrw replay` does) in a fresh child process,
so its wall time and its peak RSS (VmHWM) are its own; a full `gc.collect()` right after it
shows what the load left the cyclic GC to walk (nothing: a large trace is frozen out of its
sight). One more child times the phases one by one: map the file; decode with every check,
the screen in this process; the same with the screen in a forked child, as `load` does on
two CPUs; and, for comparison, the complete semantic report that only runs when the screen
doubts. It also times invalid copies of the same trace, whose load must fail listing every
problem with its JSON path.
Results go to benchmarks/results/trace_io-<time>.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def synth(n_calls: int, per_wf: int, text: bool, seed: int = 0) -> dict:
    """A valid trace as a plain document: workflows of `per_wf` calls, each call depending
    on one or two earlier calls of its workflow (chains with fan-in), recorded times."""
    rng = random.Random(seed)
    wfs = []
    n_wf = max(1, n_calls // per_wf)
    hid = 0
    for j in range(n_wf):
        calls = []
        t = j * 0.01
        for k in range(per_wf):
            cid = f"w{j}.c{k}"
            deps = [] if k == 0 else ([f"w{j}.c{k - 1}"] if k < 2 or rng.random() < 0.7 else [f"w{j}.c{k - 1}", f"w{j}.c{k - 2}"])
            n_in = rng.randint(64, 2048)
            n_out = rng.randint(16, 512)
            c: dict = {"id": cid, "node": f"agent{k % 4}", "deps": deps, "wait_s": round(rng.random() * 0.05, 4),
                       "input_tokens": n_in, "output_tokens": n_out,
                       "t_issue": round(t, 6), "t_first_token": round(t + 0.05, 6), "t_end": round(t + 0.5, 6)}
            t += 0.6
            if text:
                segs = [{"ref": d} for d in deps] + [{"text": f"Step {k}: do the next part of task {j}."}]
                c["messages"] = [{"role": "system", "content": [{"text": "You are a helpful agent."}]},
                                 {"role": "user", "content": segs}]
                c["output"] = "ok " * 8
            else:
                nb = max(1, n_in // 64)
                c["hash_ids"] = [hid + i for i in range(min(nb, 8))]
                hid += 8
            calls.append(c)
        wfs.append({"id": f"w{j}", "arrival_s": round(j * 0.01, 6), "tags": {"kind": "synthetic"}, "calls": calls})
    header = {"format": "mrw-trace", "version": 1, "workload": "synthetic-io",
              "generator": {"name": "benchmarks.trace_io", "params": {"calls": n_calls, "per_wf": per_wf, "text": text}, "seed": seed},
              "recorded_against": {"engine": "none", "model": None, "tokenizer": None},
              "created": "2026-01-01T00:00:00+00:00", "mrw_version": "0.1.0"}
    if not text:
        header["block_size"] = 64
    return {"header": header, "workflows": wfs}


def corrupt(doc: dict, kind: str) -> list[str]:
    """Plant two problems far apart, of the schema or of the semantics (the report lists schema
    problems first and semantic ones only for a well-formed document); return their paths."""
    w = doc["workflows"]
    n = len(w)
    a, b = 1, n - 2
    if kind == "schema":
        w[a]["calls"][0]["output_tokens"] = -5
        w[b]["calls"][0]["node"] = 7
        return [f"$.workflows[{a}].calls[0].output_tokens", f"$.workflows[{b}].calls[0].node"]
    w[a]["calls"][1]["deps"] = ["nope"]
    w[b]["calls"][2]["id"] = w[b]["calls"][1]["id"]
    return [f"$.workflows[{a}].calls[1].deps[0]", f"$.workflows[{b}].calls[2].id"]


_CHILD = r"""
import resource, sys, time
t0 = time.perf_counter()
from mrw.trace import load
from mrw.errors import TraceError
t1 = time.perf_counter()
c1 = time.process_time()
try:
    tr = load(sys.argv[1])
    ok, n, problems = True, tr.n_calls, []
except TraceError as e:
    ok, n, problems = False, 0, [str(p) for p in (e.problems or [])]
t2 = time.perf_counter()
c2 = time.process_time()
import gc
gc.collect()  # what the load left the cyclic GC to walk (the first collection after it, else)
t3 = time.perf_counter()
import orjson
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent's pages.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
# the screen's child process, where load forked one (its RSS counts the pages it shares with
# this process up to the fork: imports, and the mapped file as it reads it)
child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(orjson.dumps({"ok": ok, "calls": n, "import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1, "gc_after_s": t3 - t2,
                    "peak_rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "screen_child_peak_rss_mb": child_mb,
                    "problems": problems[:20], "n_problems": len(problems)}).decode())
"""


_PHASES = r"""
import gc, sys, time
from mrw import trace as tr, validate as v
gc.disable()
out = {}
def step(name, f, *a, **kw):
    c, t = time.process_time(), time.perf_counter()
    r = f(*a, **kw)
    out[name] = {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    return r
m = tr._mapped(sys.argv[1])
data = step("map", m.__enter__)  # what load does with a large file (a .gz: read + gunzip)
# parse, structure check, build, semantic screen: all in this process, then as load does it on
# two CPUs (the screen in a forked child, on its own lean decode; CPU here is this process's)
got = step("decode+checks, one process", v.decode, data, parallel=False)
del got
got = step("decode+checks, screen in a child", v.decode, data, parallel=True)
del data
m.__exit__(None, None, None)
problems = step("semantic report", v.semantic_report, got[0])  # the full walk an invalid trace costs
import orjson
print(orjson.dumps({"phases": out, "ok": got is not None and not got[1] and not problems}).decode())
"""


def measure(path: Path, python: str = sys.executable, child: str = _CHILD) -> dict:
    out = subprocess.run([python, "-c", child, str(path)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"load of {path} crashed: {out.stderr[-2000:]}")
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.trace_io", description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--per-workflow", type=int, default=8)
    ap.add_argument("--text", action="store_true", help="short texts with refs instead of hash_ids")
    ap.add_argument("--repeat", type=int, default=3, help="loads of the valid trace (best and all are reported)")
    ap.add_argument("--no-invalid", action="store_true", help="skip the invalid-trace load")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    gc.disable()  # this process only builds and writes the files; the loads run in children
    with tempfile.TemporaryDirectory(prefix="mrw-traceio-") as tmp:  # removed even when a load crashes
        return _run(a, argv, Path(tmp))


def _run(a: argparse.Namespace, argv: list[str] | None, tmp: Path) -> int:
    t = time.perf_counter()
    doc = synth(a.calls, a.per_workflow, a.text)
    data = orjson.dumps(doc)
    valid = tmp / "valid.json"
    valid.write_bytes(data)
    gen_s = time.perf_counter() - t
    del data
    invalid = {}
    for kind in ("schema", "semantic"):
        d = orjson.loads(valid.read_bytes())
        expected = corrupt(d, kind)
        p = tmp / f"invalid-{kind}.json"
        p.write_bytes(orjson.dumps(d))
        invalid[kind] = (p, expected)
        del d
    del doc
    print(f"synthetic trace: {a.calls:,} calls, {valid.stat().st_size / 2**20:.0f} MiB, generated in {gen_s:.1f} s", flush=True)

    runs = [measure(valid) for _ in range(a.repeat)]
    for r in runs:
        print(f"load+validate valid: {r['load_s']:.2f} s (CPU {r['load_cpu_s']:.2f} s in this process), then a full GC "
              f"{r['gc_after_s']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB (screen child {r['screen_child_peak_rss_mb']:.0f} MB), "
              f"ok={r['ok']}", flush=True)
    phases = measure(valid, child=_PHASES)
    print("phases, wall s (CPU s): " + ", ".join(f"{k} {x['s']:.2f} ({x['cpu_s']:.2f})" for k, x in phases["phases"].items()), flush=True)
    res: dict = {
        "benchmark": "trace_io",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "-m", "benchmarks.trace_io", *(argv if argv is not None else sys.argv[1:])]),
        "calls": a.calls,
        "text": a.text,
        "file_mib": valid.stat().st_size / 2**20,
        "load_avg": os.getloadavg(),
        "valid": runs,
        "best_load_s": min(r["load_s"] for r in runs),
        "best_load_cpu_s": min(r["load_cpu_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "phases": phases["phases"],
    }
    if not a.no_invalid:
        res["invalid"] = {}
        all_found = True
        for kind, (p, expected) in invalid.items():
            bad = measure(p)
            found = [x.split(":")[0] for x in bad["problems"]]
            bad["paths_expected"] = expected
            bad["all_found"] = not bad["ok"] and all(e in found for e in expected)
            all_found = all_found and bad["all_found"]
            res["invalid"][kind] = bad
            print(f"load invalid ({kind}): {bad['load_s']:.2f} s (CPU {bad['load_cpu_s']:.2f} s), {bad['n_problems']} problems, planted ones reported: {bad['all_found']}")
            for x in bad["problems"][:4]:
                print("   ", x)
        res["invalid_all_found"] = all_found
    out = a.out or RESULTS / f"trace_io-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much metering costs and how fast the energy analysis is, at realistic sizes.

1. Sampler cost: one MeterSet tick with N GPUs behind the fake NVML binding (measures mrw's
   own per-tick Python cost; real NVML calls add their own, recorded in energy.json on a GPU
   host as `sampling.tick_cost_mean_ms`) plus the process meter on real processes.
2. Analysis: finalize() on a synthetic run of DURATION seconds at 20 Hz with N GPUs and R
   requests (CSV load, steady window, cross-check, token attribution).

usage: python benchmarks/bench_energy.py [--gpus 8] [--duration 3600] [--requests 10000]
Writes benchmarks/results/energy.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_nvml import FakeGpu, FakeNvml  # noqa: E402

from mrw.analysis.energy import finalize  # noqa: E402
from mrw.replay.meters import MeterSet  # noqa: E402
from mrw.replay.meters.base import TIMELINE_COLUMNS  # noqa: E402


def bench_sampler(gpus: int, seconds: float) -> dict:
    nv = FakeNvml([FakeGpu(f"GPU-{i:04d}") for i in range(gpus)])
    with tempfile.TemporaryDirectory() as d:
        with MeterSet.for_run(d, meters="nvml,process", baseline_s=0, nvml=nv, env={}) as m:
            time.sleep(seconds)
        s = m.sampler_stats()
    return {"gpus": gpus, "seconds": seconds, **s}


def synth_run(d: Path, gpus: int, duration: float, n_req: int, period: float = 0.05) -> None:
    rng = random.Random(0)
    with open(d / "power.csv", "w") as f:
        f.write(",".join(TIMELINE_COLUMNS) + "\n")
        e = [0.0] * gpus
        k = int(-5 / period)
        while k * period <= duration:
            t = k * period
            for g in range(gpus):
                p = 100.0 if t < 0 else 400 + 200 * rng.random()
                e[g] += p * period
                f.write(f"{t:.4f},gpu,{g},{e[g]:.4f},{p:.1f},{p:.1f},{p:.1f},1980,2619,60,90,40,60000,0,\n")
            k += 1
    reqs = []
    for i in range(n_req):
        a = rng.uniform(0, duration - 20)
        first = a + rng.uniform(0.05, 1.0)
        end = first + rng.uniform(1, 15)
        reqs.append({"call_id": f"c{i}", "workflow_id": f"w{i // 5}", "node": f"n{i % 4}", "ok": True, "t_issue": a,
                     "t_first_token": first, "t_end": end, "input_tokens": rng.randint(50, 4000),
                     "output_tokens": rng.randint(10, 500)})
    (d / "requests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in reqs))
    (d / "energy.json").write_bytes(orjson.dumps({
        "format": "mrw-energy", "version": 1, "status": "complete", "timeline_file": "power.csv",
        "baseline": {"start_s": -5.0, "duration_s": 5.0, "energy_j": {"gpu": 500.0 * gpus}, "avg_power_w": {"gpu": 100.0 * gpus}},
        "run": {"start_s": 0.0, "duration_s": duration, "energy_j": {"gpu": sum(e) - 500.0 * gpus}},
    }))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--requests", type=int, default=10000)
    a = ap.parse_args()
    res = {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count()}
    res["sampler_1gpu"] = bench_sampler(1, 3.0)
    res["sampler"] = bench_sampler(a.gpus, 3.0)
    with tempfile.TemporaryDirectory() as d:
        dd = Path(d)
        t = time.perf_counter()
        synth_run(dd, a.gpus, a.duration, a.requests)
        res["synth_s"] = time.perf_counter() - t
        res["timeline_mb"] = (dd / "power.csv").stat().st_size / 1e6
        t = time.perf_counter()
        doc = finalize(dd)
        res["finalize"] = {"gpus": a.gpus, "duration_s": a.duration, "requests": a.requests,
                           "seconds": time.perf_counter() - t,
                           "attributed_share": doc["attribution"]["domains"]["gpu"]["attributed_j"] / doc["attribution"]["domains"]["gpu"]["total_j"]}
    out = Path(__file__).parent / "results" / "energy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

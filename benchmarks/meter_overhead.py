"""Meter overhead: CPU time the background power sampler costs the replaying process.

    python -m benchmarks.meter_overhead                    # 10 Hz, 60 s, stand-in NVML (1 GPU)
    python -m benchmarks.meter_overhead --real-nvml --gpus all    # on a GPU host

The sampler is `mrw.replay.meters.MeterSet` exactly as a replay runs it (a thread ticking at
`--hz`, every meter's `sample()`, the power.csv writer flushing once a second). The process
sits otherwise idle, so its CPU time (`time.process_time`: every thread of the process) over
the window, minus that of the same idle window without a sampler, is the sampler's own cost.
Goal: <= 0.5% of one core at 10 Hz.

Where NVML is absent (no NVIDIA driver) the NVML meter is driven through the test suite's
stand-in binding (tests/fake_nvml.py), which answers the same calls with the same types:
what is measured then is mrw's own per-tick cost (Python, the CSV row), not the driver's
ioctls; --real-nvml measures both on a GPU host. The result says which.
Results go to benchmarks/results/meter_overhead-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def idle_cpu(seconds: float) -> float:
    c0 = time.process_time()
    time.sleep(seconds)
    return time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.meter_overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--gpus", default="1", help="stand-in GPUs (a number), or 'all' with --real-nvml")
    ap.add_argument("--meters", default="nvml,rapl,process", help="meters to run (those unavailable here are reported)")
    ap.add_argument("--real-nvml", action="store_true", help="use the installed NVML (a GPU host)")
    ap.add_argument("--stand-in-dir", type=Path, default=HERE.parent / "tests", help="where fake_nvml.py is")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    try:
        from mrw.replay.meters import MeterSet
    except ImportError as e:
        raise SystemExit(f"mrw.replay.meters.MeterSet is not importable ({e}); this mrw has no meters yet") from None
    nvml = None
    stand_in = not a.real_nvml
    if stand_in:
        sys.path.insert(0, str(a.stand_in_dir))
        from fake_nvml import FakeGpu, FakeNvml

        nvml = FakeNvml([FakeGpu(f"GPU-{i:04d}") for i in range(int(a.gpus))])

    base = idle_cpu(min(10.0, a.seconds))
    base_rate = base / min(10.0, a.seconds)
    with tempfile.TemporaryDirectory() as d:
        ms = MeterSet.for_run(d, meters=a.meters, baseline_s=0, period_s=1.0 / a.hz, nvml=nvml, env={} if stand_in else None)
        ms.start()
        ms.measure_baseline()
        time.sleep(1.0)  # past the first tick and file set-up
        w0, c0 = time.perf_counter(), time.process_time()
        time.sleep(a.seconds)
        cpu = time.process_time() - c0
        wall = time.perf_counter() - w0
        ms.stop()
        stats = ms.sampler_stats()
        avail = {k: v.to_dict() for k, v in ms.availability.items()}
        csv_bytes = (Path(d) / "power.csv").stat().st_size if (Path(d) / "power.csv").exists() else None
    net = cpu - base_rate * wall
    res = {
        "benchmark": "meter_overhead",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "-m", "benchmarks.meter_overhead", *(argv if argv is not None else sys.argv[1:])]),
        "hz": a.hz,
        "seconds": wall,
        "nvml": "stand-in binding (tests/fake_nvml.py): mrw's own per-tick cost, not the driver's" if stand_in else "real NVML",
        "meters": avail,
        "process_cpu_s": cpu,
        "idle_cpu_s_per_s": base_rate,
        "sampler_cpu_pct_of_one_core": 100.0 * net / wall,
        "goal_pct": 0.5,
        "sampler": stats,
        "power_csv_bytes": csv_bytes,
        "load_avg": os.getloadavg(),
    }
    out = a.out or RESULTS / f"meter_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    on = [k for k, v in avail.items() if v.get("available")]
    print(f"sampler at {a.hz:g} Hz ({', '.join(on)}; NVML: {'stand-in' if stand_in else 'real'}): "
          f"{res['sampler_cpu_pct_of_one_core']:.3f}% of one core "
          f"(tick {stats.get('tick_cost_mean_ms', float('nan')):.3f} ms mean), load {res['load_avg'][0]:.2f}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Energy around a real replay (vLLM on this machine): the files, the sources that cannot
measure here saying why, the engine's CPU time, and - with the fake NVML binding standing in
for a GPU - knobs applied before and restored after a real replay, and energy attributed to
the real requests' timings."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from fake_nvml import FakeGpu, FakeNvml, sine_energy
from mrw.replay.engines.base import EngineOptions
from mrw.replay.meters import MeteringOptions
from mrw.replay.scheduler import ReplayOptions

pytestmark = pytest.mark.vllm


def test_replay_writes_energy_files_and_says_what_is_unavailable(vllm_url, small_trace, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "mrw", "replay", str(small_trace), "--url", vllm_url, "-q", "-o", str(run)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = orjson.loads((run / "energy.json").read_bytes())
    meta = orjson.loads((run / "run.json").read_bytes())
    assert meta["files"]["energy"] == "energy.json" and meta["metering"]["meters"] == ["nvml", "rapl", "process"]
    assert doc["status"] == "complete"
    for src in ("nvml", "rapl"):
        if not doc["sources"][src]["available"]:
            assert doc["sources"][src]["reason"]  # why not, never a number
            dom = {"nvml": "gpu", "rapl": "cpu"}[src]
            assert dom not in doc["windows"]["run"]["domains"]
    assert doc["devices"]["process"]["engine_pid"]  # found listening at the URL
    assert doc["windows"]["run"]["cpu_time"]["engine_cpu_s"] > 0
    assert doc["windows"]["run"]["requests"] == 7
    a = subprocess.run([sys.executable, "-m", "mrw", "analyze", str(run)], capture_output=True, text=True, timeout=120)
    assert a.returncode == 0 and "energy sources" in a.stdout


def test_replay_with_a_capped_fake_gpu(vllm_url, small_trace, tmp_path, monkeypatch):
    import time

    from mrw.replay import driver
    from mrw.replay.meters import nvml as nvmlmod

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    e_fn = sine_energy(350, 100, 4.0, t0=time.perf_counter())
    gpu = FakeGpu("GPU-aaaa-1111", limit_mw=700_000, energy_j=e_fn)
    fake = FakeNvml([gpu], clock=time.perf_counter)
    seen: dict[str, int] = {}
    real_load = nvmlmod.load_nvml
    monkeypatch.setattr(nvmlmod, "load_nvml", lambda nvml=None: fake if nvml is None else real_load(nvml))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")
    orig_start = driver.MeterSet.start

    def spy_start(self):  # the cap is in force while the meters start, i.e. during the replay
        seen["limit_during_run"] = gpu.limit_mw
        return orig_start(self)

    monkeypatch.setattr(driver.MeterSet, "start", spy_start)
    run = tmp_path / "run"
    out = driver.replay(small_trace, "vllm", EngineOptions(url=vllm_url), ReplayOptions(), run,
                        metering=MeteringOptions(baseline_s=1.0, cap_w=250, meters="nvml,process"))
    assert out.status == "completed"
    assert seen["limit_during_run"] == 250_000 and gpu.limit_mw == 700_000  # capped, then restored
    doc = orjson.loads((run / "energy.json").read_bytes())
    k = doc["knobs"]
    assert k["cap_w_requested"] == 250 and k["restored"] is True
    assert k["gpus"][0]["cap_effective_w"] == 250.0 and k["gpus"][0]["limit_after_restore_w"] == 700.0
    w = doc["windows"]
    t0, mk = doc["t0_perf_counter"], doc["marks"]
    bs, rs, re_ = (t0 + mk[k]["t_s"] for k in ("baseline_start", "run_start", "run_end"))
    # the counters read at the marks give the fake GPU's energy between the marks: exact to its
    # 1 mJ resolution, plus what the GPU draws between stamping a mark and reading the counter
    # (microseconds; up to ~1 ms when the 2 cores are busy: 0.35 J at 350 W). A wrong window
    # would be off by joules (the run lasts seconds at 250-450 W).
    assert w["baseline"]["avg_power_w"]["gpu"] == pytest.approx((e_fn(rs) - e_fn(bs)) / (rs - bs), abs=0.5)
    assert w["run"]["domains"]["gpu"]["gross_j"] == pytest.approx(e_fn(re_) - e_fn(rs), abs=0.35)
    att = doc["attribution"]["domains"]["gpu"]
    assert att["attributed_j"] + att["unattributed_j"] == pytest.approx(att["total_j"], rel=1e-6)
    assert att["attributed_j"] > 0 and set(att["per_stage"]) == {"summarize", "refine", "planner", "worker", "aggregator"}
    assert abs(doc["cross_check"]["0"]["power_instant"]["rel_diff"]) < 0.03  # 20 Hz trapezoid of a 4 s sine, loaded machine
    lines = [orjson.loads(x) for x in (run / "energy_requests.jsonl").read_bytes().splitlines()]
    assert len(lines) == 7 and all(x["gpu_j"] > 0 for x in lines)
    assert all(x["gpu_prefill_j"] + x["gpu_decode_j"] == pytest.approx(x["gpu_j"]) for x in lines)

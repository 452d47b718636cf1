"""A 2x2 sweep (batch 1,4 x out-scale 0.5,1) on the embedded vLLM (the tiny model),
interrupted with SIGINT mid-point and resumed; then the table is checked against each run's
own summary.json and every figure is decoded. The sweep relaunches vLLM per batch size, so
it starts its own servers from the model spec (not the session's shared server)."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from sweep_fixtures import write_trace
from test_sweep_figures import assert_png

from mrw.launch import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

POINTS = ["mix-b1-capnone-out0.5-in1-r1", "mix-b1-capnone-out1-in1-r1", "mix-b4-capnone-out0.5-in1-r1", "mix-b4-capnone-out1-in1-r1"]


def _mrw(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrw", *args], capture_output=True, text=True, timeout=900, **kw)


def _lines(p: Path) -> int:
    return sum(1 for ln in p.read_bytes().splitlines() if ln.strip()) if p.exists() else 0


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sweep_interrupt_resume_analyze(tiny, tmp_path):
    from conftest import _need_vllm

    _need_vllm()
    trace = write_trace(tmp_path / "mix.json", tiny.path)
    out = tmp_path / "sw"
    port = int(os.environ.get("MRW_SWEEP_TEST_PORT") or free_port())
    cmd = [sys.executable, "-m", "mrw", "sweep", str(trace), "--batch", "1,4", "--out-scale", "0.5,1", "--model", "tiny",
           "--out", str(out), "--port", str(port), "--wait-scale", "8"]  # waits x8: each point lasts a few seconds

    # 1. run until the third point (first of the batch-4 group) is under way, then SIGINT
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    third = out / "runs" / POINTS[2]
    deadline = time.monotonic() + 600
    while _lines(third / "requests.jsonl") < 1:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the third point never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(120)
    log.close()
    first_log = (tmp_path / "first.log").read_text()
    assert rc == 130, first_log[-3000:]

    man = orjson.loads((out / "sweep.json").read_bytes())
    status = {p["name"]: p["status"] for p in man["points"]}
    assert status == {POINTS[0]: "completed", POINTS[1]: "completed", POINTS[2]: "interrupted", POINTS[3]: "pending"}
    assert man["status"] == "interrupted"
    for name in POINTS[:2]:
        assert orjson.loads((out / "runs" / name / "run.json").read_bytes())["status"] == "completed"
        assert (out / "runs" / name / "summary.json").exists() and (out / "runs" / name / "point.json").exists()
    rj = orjson.loads((third / "run.json").read_bytes())
    assert rj["status"] == "interrupted"
    assert _lines(third / "requests.jsonl") == 6  # every call accounted for: finished or marked unfinished
    assert _port_closed(port), "the sweep left its vLLM running"
    kept = {n: (out / "runs" / n / "run.json").read_bytes() for n in POINTS[:2]}

    # 2. the same command again: finished points are skipped, the interrupted one redone
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for n in POINTS[:2]:
        assert (out / "runs" / n / "run.json").read_bytes() == kept[n]  # not rerun
    moved = out / "attempts" / f"{POINTS[2]}.1"
    assert orjson.loads((moved / "run.json").read_bytes())["status"] == "interrupted"  # kept, not deleted
    man = orjson.loads((out / "sweep.json").read_bytes())
    assert man["status"] == "completed" and man["counts"] == {"total": 4, "completed": 4}
    assert [p["attempts"] for p in man["points"]] == [1, 1, 2, 1]
    assert [launch["launch"] for launch in man["launches"]] == ["vllm-b1", "vllm-b4", "vllm-b4"]  # one launch per group per session
    for n in POINTS:
        r = orjson.loads((out / "runs" / n / "run.json").read_bytes())
        assert r["status"] == "completed" and r["token_check"]["output_mismatch"] == 0
        assert r["token_check"]["input_mismatch"] == 0  # scaled prompts recounted with the model's tokenizer
    assert _port_closed(port)

    # 3. analyze: one table; each row is its run's own summary
    res = _mrw("analyze", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mix-b4-capnone-out1-in1" in res.stdout
    with open(out / "analysis" / "sweep_runs.csv", newline="") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(POINTS)
    for n, row in rows.items():
        s = orjson.loads((out / "runs" / n / "summary.json").read_bytes())
        assert int(float(row["requests_ok"])) == s["requests"]["ok"] == 6
        assert float(row["makespan_mean_s"]) == pytest.approx(s["workflows"]["makespan_s"]["mean"])
        assert float(row["e2e_p90_s"]) == pytest.approx(s["latency"]["e2e_s"]["p90"])
        assert float(row["ttft_p50_s"]) == pytest.approx(s["latency"]["ttft_s"]["p50"])
        assert float(row["throughput_out_tok_s"]) == pytest.approx(s["throughput"]["output_tokens_per_s"])
        assert int(float(row["output_tokens"])) == s["tokens"]["output"]
        assert float(row["out_scale"]) == (0.5 if "out0.5" in n else 1.0) and int(row["batch"]) == (1 if "-b1-" in n else 4)
        if s.get("energy") is None:
            assert row["j_per_output_token"] == "" and row["energy_j"] == ""  # not measured: blank, not 0
    b1 = {n: r for n, r in rows.items() if "-b1-" in n}
    # half the output length: fewer output tokens in the run (the transform reached the engine)
    assert int(float(b1[POINTS[0]]["output_tokens"])) < int(float(b1[POINTS[1]]["output_tokens"]))
    import pandas as pd

    pq = pd.read_parquet(out / "analysis" / "sweep.parquet")
    assert len(pq) == 4 and set(pq["n"]) == {1}

    # energy: every point metered by the replay (when this build's replay meters), each with its
    # own energy.json; on a machine without NVML/RAPL the sources say so and give no number
    from mrw.replay import sweep as sw

    if sw.metering_options(sw.SweepConfig()) is not None:
        for n in POINTS:
            e = orjson.loads((out / "runs" / n / "energy.json").read_bytes())
            assert set(e["sources"]) == {"nvml", "rapl", "process"}
            for src, info in e["sources"].items():
                if not info["available"]:
                    assert info["reason"]
            if not e["sources"]["nvml"]["available"] and not e["sources"]["rapl"]["available"]:
                assert rows[n]["energy_j"] == "" and rows[n]["j_per_output_token"] == ""  # never invented
            assert "windows" in e  # finalised

    # 4. figures: every one drawn is a real PNG of its stated size; the others say why not
    figs = orjson.loads((out / "analysis" / "figures" / "figures.json").read_bytes())
    by = {f["name"]: f for f in figs}
    for name in ("energy_per_token_vs_batch", "pareto_latency_energy", "cap_energy_latency", "energy_vs_output_length", "latency_breakdown"):
        assert name in by
    drawn = [f for f in figs if f["path"]]
    assert by["latency_breakdown"]["path"] and len([f for f in drawn if f["name"].startswith("breakdown:")]) == 4
    for f in drawn:
        assert_png(f["path"], tuple(f["size_px"]))
    assert "two power caps" in by["cap_energy_latency"]["reason"]
    with open(out / "analysis" / "sweep.csv", newline="") as f:
        agg = list(csv.DictReader(f))
    measured = any(r["j_per_output_token"] for r in agg)
    cpu_time = any(r["engine_cpu_ms_per_output_token"] for r in agg)
    for name in ("energy_per_token_vs_batch", "pareto_latency_energy", "energy_vs_output_length"):
        f = by[name]
        if measured:
            assert f["path"] and not f["note"] or name == "energy_vs_output_length"
        elif cpu_time:  # the labelled stand-in axis
            assert f["path"] and "stand-in" in f["note"], f
        else:
            assert f["path"] is None and "energy" in f["reason"]

    # 5. compare two points of the sweep
    res = _mrw("compare", str(out / "runs" / POINTS[1]), str(out / "runs" / POINTS[3]))
    assert res.returncode == 0, res.stderr
    assert "B − A" in res.stdout and "makespan mean" in res.stdout
    res = _mrw("compare", str(out / "runs" / POINTS[0]), str(out / "runs" / POINTS[3]))
    assert "different length-scalings of one trace" in res.stdout + res.stderr


def test_failed_launch_fails_its_group_once(tiny, tmp_path):
    """An engine that cannot start (a bad flag here) fails its group's points with the reason,
    is tried once per group, and the command exits 1 naming them; nothing is left running."""
    from conftest import _need_vllm

    _need_vllm()
    trace = write_trace(tmp_path / "mix.json", tiny.path)
    out = tmp_path / "sw"
    res = _mrw("sweep", str(trace), "--out-scale", "0.5,1", "--model", "tiny", "--out", str(out), "-q",
               "--engine-arg=--no-such-vllm-flag")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "2 point(s) failed" in res.stderr
    man = orjson.loads((out / "sweep.json").read_bytes())
    assert [p["status"] for p in man["points"]] == ["failed", "failed"]
    assert all("engine launch failed" in p["error"] for p in man["points"])
    assert len(man["launches"]) == 1 and "error" in man["launches"][0]
    assert man["status"] == "completed with failures"
    assert (out / "engines" / "vllm-bdef.log").exists()

"""Replay building blocks that need no server: arrivals, request building, feasibility,
registry, knob refusal, Prometheus parsing, run directory reading, critical paths."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from mrw.errors import KnobError, NotSupportedError, TraceError, UnknownNameError
from mrw.replay import run as runmod
from mrw.replay.engines.base import EngineKnobs, EngineOptions
from mrw.replay.engines.registry import get_engine, names
from mrw.replay.engines.vllm import launch_flags
from mrw.replay.metrics_scrape import info_labels, pick
from mrw.replay.scheduler import ReplayOptions, arrival_times, build_request, check_feasible
from mrw.trace import Call, Message, Trace, Workflow, new_header

from replay_fixtures import build_trace

DATA = Path(__file__).parent / "data"


def test_recorded_arrivals_scale_from_the_first_workflow():
    t = build_trace()
    assert arrival_times(t.workflows, ReplayOptions()) == [0.0, 0.5]
    assert arrival_times(t.workflows, ReplayOptions(time_scale=2.0)) == [0.0, 1.0]
    assert arrival_times(t.workflows, ReplayOptions(time_scale=0.0)) == [0.0, 0.0]


def test_poisson_arrivals_are_seeded_and_have_the_asked_rate():
    wfs = [Workflow(f"w{i}", 0.0, []) for i in range(4000)]
    a = arrival_times(wfs, ReplayOptions(rate=8.0, seed=3))
    assert a == arrival_times(wfs, ReplayOptions(rate=8.0, seed=3))
    assert a != arrival_times(wfs, ReplayOptions(rate=8.0, seed=4))
    assert a[0] == 0.0 and all(x <= y for x, y in zip(a, a[1:]))
    mean_gap = a[-1] / (len(a) - 1)
    assert abs(mean_gap - 1 / 8.0) < 0.01


def test_build_request_splices_recorded_text_and_forces_length():
    t = build_trace()
    c1 = t.workflows[0].calls[1]
    c1.sampling = {"temperature": 0.7, "max_tokens": 999, "stop": ["\n"], "n": 3}
    r = build_request(c1, "doc-0", t.recorded_outputs(), t.header, ReplayOptions())
    assert t.workflows[0].calls[0].output in r.messages[1]["content"]
    assert (r.max_tokens, r.min_tokens, r.ignore_eos) == (16, 16, True)
    assert r.sampling == {"temperature": 0.7}  # owned fields and the stop string are dropped
    live = build_request(c1, "doc-0", {"doc-0/c0": "LIVE TEXT"}, t.header, ReplayOptions(live_refs=True))
    assert "LIVE TEXT" in live.messages[1]["content"] and live.keep_output
    free = build_request(c1, "doc-0", t.recorded_outputs(), t.header, ReplayOptions(force_output_length=False))
    assert (free.min_tokens, free.ignore_eos, free.sampling.get("stop")) == (None, False, ["\n"])


def test_text_free_calls_get_synthetic_token_id_prompts():
    t = build_trace()
    t.header.block_size = 16
    c = t.workflows[0].calls[0]
    c.messages = None
    c.input_tokens = 40
    c.hash_ids = [11, 22, 33]
    notes = check_feasible(t, t.workflows, get_engine("vllm").capabilities, ReplayOptions())
    assert any("synthetic token-id prompts" in n for n in notes)
    r = build_request(c, "doc-0", t.recorded_outputs(), t.header, ReplayOptions())
    assert r.messages is None and isinstance(r.prompt, list) and len(r.prompt) == 40
    assert all(isinstance(i, int) for i in r.prompt)
    with pytest.raises(NotSupportedError, match="token-id prompts"):
        check_feasible(t, t.workflows, get_engine("openai").capabilities, ReplayOptions())


def test_missing_recorded_output_needs_live_refs():
    t = build_trace()
    t.workflows[0].calls[0].output = None
    caps = get_engine("vllm").capabilities
    with pytest.raises(TraceError, match="--live-refs"):
        check_feasible(t, t.workflows, caps, ReplayOptions())
    assert check_feasible(t, t.workflows, caps, ReplayOptions(live_refs=True))  # a fidelity note


def test_registry_names_and_unknown_engine():
    assert {"vllm", "openai"} <= set(names())
    with pytest.raises(UnknownNameError, match="known engines: .*openai.*vllm"):
        get_engine("tgi-nope")


def test_knobs_become_vllm_flags():
    k = EngineKnobs(max_num_seqs=8, prefix_caching=False, gpu_memory_utilization=0.5, max_model_len=2048, engine_args=["--seed", "1"])
    assert launch_flags(k) == ["--max-num-seqs", "8", "--no-enable-prefix-caching", "--gpu-memory-utilization", "0.5",
                               "--max-model-len", "2048", "--seed", "1"]


def test_generic_openai_engine_refuses_knobs_and_unknown_support():
    eng = get_engine("openai")(EngineOptions(url="http://127.0.0.1:1", knobs=EngineKnobs(max_num_seqs=4)))
    with pytest.raises(KnobError, match="--max-num-seqs"):
        asyncio.run(eng.preflight())
    with pytest.raises(KnobError, match="unknown feature"):
        get_engine("openai")(EngineOptions(url="http://x", extra={"supports": ["min_tokenz"]}))
    ok = get_engine("openai")(EngineOptions(url="http://x", extra={"supports": ["min_tokens", "ignore_eos"]}))
    assert ok.capabilities.exact_output_length and ok.fidelity().output_length_forced
    gap = get_engine("openai")(EngineOptions(url="http://x"))
    f = gap.fidelity()
    assert not f.output_length_forced and any("not forced" in n for n in f.notes)


def test_prometheus_pick_on_real_vllm_metrics():
    text = (DATA / "vllm-0.32-metrics.txt").read_text()
    got = pick(text)
    assert got["generation_tokens_total"] == 305.0
    assert got["num_requests_running"] == 0.0
    assert {"kv_cache_usage_perc", "prefix_cache_hits_total", "prefix_cache_queries_total", "num_requests_waiting"} <= set(got)
    cc = info_labels(text, "vllm:cache_config_info")
    assert cc["enable_prefix_caching"] == "True" and cc["block_size"] == "128"


def test_run_dir_survives_a_torn_line_and_a_dead_writer(tmp_path):
    w = runmod.RunWriter.create(tmp_path / "r", {"trace": {"calls": 2}, "host": runmod.host_info()})
    w.append({"call_id": "a", "workflow_id": "w", "ok": True, "t_issue": 0.0, "t_end": 1.0})
    with open(tmp_path / "r" / "requests.jsonl", "ab") as f:
        f.write(b'{"call_id": "b", "work')  # killed mid-write
    meta, rows = runmod.read_run(tmp_path / "r")
    assert [r["call_id"] for r in rows] == ["a"] and meta["status"] == "running"  # we are its (live) pid
    m = orjson.loads((tmp_path / "r" / "run.json").read_bytes())
    m["pid"] = 2**22 + 12345  # a pid that does not exist
    (tmp_path / "r" / "run.json").write_bytes(orjson.dumps(m))
    meta, _ = runmod.read_run(tmp_path / "r")
    assert meta["status"] == "abandoned"
    with pytest.raises(Exception, match="already exists"):
        runmod.RunWriter.create(tmp_path / "r", {})


def test_critical_path_splits_makespan_exactly():
    from mrw.analysis.summary import critical_path

    rows = [
        {"call_id": "a", "ok": True, "deps": [], "wait_s": 0.5, "t_issue": 1.6, "t_first_token": 1.7, "t_end": 2.0},
        {"call_id": "b", "ok": True, "deps": ["a"], "wait_s": 1.0, "t_issue": 3.1, "t_first_token": 3.3, "t_end": 4.0},
        {"call_id": "c", "ok": True, "deps": ["a"], "wait_s": 0.0, "t_issue": 2.0, "t_first_token": 2.1, "t_end": 2.5},
        {"call_id": "d", "ok": True, "deps": ["b", "c"], "wait_s": 0.0, "t_issue": 4.0, "t_first_token": 4.1, "t_end": 5.0},
    ]
    cp = critical_path(rows, t_arrival=1.0)
    assert cp["calls"] == ["a", "b", "d"]
    assert cp["length_s"] == pytest.approx(4.0)
    assert cp["llm_s"] == pytest.approx(0.4 + 0.9 + 1.0)
    assert cp["wait_s"] == pytest.approx(1.5)
    assert cp["delay_s"] == pytest.approx(0.1 + 0.1 + 0.0)
    assert cp["llm_s"] + cp["wait_s"] + cp["delay_s"] == pytest.approx(cp["length_s"])
    assert cp["llm_ttft_s"] == pytest.approx(0.1 + 0.2 + 0.1)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_is_one_line_and_leaves_no_run_dir(tmp_path):
    trace = tmp_path / "t.json"
    from mrw.trace import dump

    dump(build_trace(), trace)
    port = _closed_port()
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "mrw", "replay", str(trace), "--url", f"http://127.0.0.1:{port}", "-o", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert err[0] == (f"mrw: error: cannot reach vLLM at http://127.0.0.1:{port}: connection refused; "
                      "start the server or drop --url to use the embedded default")
    assert not out.exists()


def test_unknown_engine_and_bad_trace_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"header": {')
    p = subprocess.run([sys.executable, "-m", "mrw", "replay", str(bad), "--url", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "truncated" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    good = tmp_path / "t.json"
    from mrw.trace import dump

    dump(build_trace(), good)
    p = subprocess.run([sys.executable, "-m", "mrw", "replay", str(good), "--engine", "nope", "--url", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "unknown engine 'nope'; known engines:" in p.stderr


def _run_dir(path: Path, label: str, e2e: float, energy: dict | None = None) -> Path:
    """A run directory written by the real RunWriter: one workflow a -> b."""
    w = runmod.RunWriter.create(path, {"trace": {"calls": 2, "workflows": 1}, "engine": {"engine": label}, "knobs": {"max_num_seqs": 8},
                                       "host": runmod.host_info()})
    w.append({"call_id": "a", "workflow_id": "w", "node": "n", "ok": True, "t_arrival": 0.0, "t_scheduled": 0.0, "t_issue": 0.001,
              "t_first_token": 0.05, "t_end": e2e, "input_tokens": 10, "output_tokens": 5, "expected_input_tokens": 10,
              "expected_output_tokens": 5, "deps": [], "wait_s": 0.0, "error": None})
    w.append({"call_id": "b", "workflow_id": "w", "node": "n", "ok": True, "t_arrival": 0.0, "t_scheduled": e2e + 0.5, "t_issue": e2e + 0.502,
              "t_first_token": e2e + 0.6, "t_end": 2 * e2e + 0.502, "input_tokens": 12, "output_tokens": 6, "expected_input_tokens": 12,
              "expected_output_tokens": 5, "deps": ["a"], "wait_s": 0.5, "error": None})
    w.finish("completed")
    if energy is not None:
        (path / "energy.json").write_bytes(orjson.dumps(energy))
    return path


def test_analyze_energy_figures_or_not_measured(tmp_path):
    from mrw.analysis.summary import _rows, summarize

    a = summarize(_run_dir(tmp_path / "a", "vllm", 1.0))
    assert a["energy"] is None and dict(_rows(a))["energy"] == "not measured"
    energy = {"sources": {"nvml": {"available": True}, "rapl": {"available": False, "reason": "RAPL: no energy zones on this machine (...)"}},
              "summary": {"gpu_energy_j": 1234.0},
              "windows": {"run": {"domains": {"gpu": {"gross_j": 1234.0, "net_j": 1000.0, "avg_power_w": 600.0, "j_per_output_token": 0.42}}},
                          "baseline": {"avg_power_w": {"gpu": 117.0}}}}
    b = summarize(_run_dir(tmp_path / "b", "vllm", 1.0, energy))
    assert b["energy"]["summary"]["gpu_energy_j"] == 1234.0
    rows = dict(_rows(b))
    assert rows["energy sources"] == "nvml; unavailable: rapl (no energy zones on this machine)"
    assert rows["GPU energy kJ gross / net"] == "1.234 / 1.000" and rows["GPU power W avg / idle"] == "600.0 / 117.0"
    assert rows["GPU J per output token run / steady"] == "0.4200 / -"
    # token check and the critical path come from the lines alone
    assert a["token_check"]["output_mismatch"] == 1 and a["token_check"]["output_examples"][0]["call_id"] == "b"
    cp = a["workflows"]["critical_path_mean"]
    assert cp["wait_s"] == pytest.approx(0.5) and cp["delay_s"] == pytest.approx(0.003) and cp["llm_s"] == pytest.approx(1.999)


def test_analyze_side_by_side_cli(tmp_path):
    _run_dir(tmp_path / "vllm-run", "vllm", 1.0)
    _run_dir(tmp_path / "parrot-run", "parrot", 2.0)
    p = subprocess.run([sys.executable, "-m", "mrw", "analyze", str(tmp_path / "vllm-run"), str(tmp_path / "parrot-run")],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert "vllm-run" in p.stdout and "parrot-run" in p.stdout and "makespan" in p.stdout
    lines = [l for l in p.stdout.splitlines() if "E2E ms" in l]
    assert lines and "1,000.0" in lines[0] and "2,000.0" in lines[0]  # each run's own mean E2E (ms)
    j = subprocess.run([sys.executable, "-m", "mrw", "analyze", "--json", str(tmp_path / "vllm-run"), str(tmp_path / "parrot-run")],
                       capture_output=True, text=True, timeout=60)
    runs = orjson.loads(j.stdout)["runs"]
    assert [r["engine"]["engine"] for r in runs] == ["vllm", "parrot"]


def test_analyze_refuses_what_is_not_a_run_dir(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mrw", "analyze", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "not a run directory (no run.json)" in p.stderr


def test_openai_engine_needs_a_url(tmp_path):
    from mrw.trace import dump

    dump(build_trace(), tmp_path / "t.json")
    p = subprocess.run([sys.executable, "-m", "mrw", "replay", str(tmp_path / "t.json"), "--engine", "openai", "-o", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--engine openai needs --url" in p.stderr and not (tmp_path / "r").exists()


def test_plots_of_one_run_and_a_comparison(tmp_path):
    pytest.importorskip("matplotlib")
    from mrw.analysis.plots import plot_compare, plot_run

    a = _run_dir(tmp_path / "a", "vllm", 1.0)
    b = _run_dir(tmp_path / "b", "parrot", 2.0)
    (a / "metrics.jsonl").write_bytes(b'{"t": 0.0, "num_requests_running": 1.0, "kv_cache_usage_perc": 0.1}\n'
                                      b'{"t": 0.5, "num_requests_running": 0.0, "kv_cache_usage_perc": 0.0}\n')
    p = plot_run(a)
    assert p == a / "timeline.png" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    c = plot_compare([a, b], tmp_path / "cmp.png")
    assert c.read_bytes()[:4] == b"\x89PNG"

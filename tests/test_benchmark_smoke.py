"""Keeps the benchmarks runnable (not a timed test: the numbers are not checked, only that
every part runs end to end and writes what docs/performance.md reads)."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not a package of mrw
from benchmarks import replay_bench, trace_io  # noqa: E402
from benchmarks.schedules import Schedule, mooncake_requests, mrw_trace, write_aiperf, write_vllm  # noqa: E402
from mrw import validate as v  # noqa: E402


def free_port() -> int:
    """A free port in the benchmark's range (8700-8799)."""
    for port in range(8790, 8800):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port in 8790-8799")


def test_schedules_are_valid_in_every_format(tmp_path) -> None:
    for s in (Schedule("independent", 50, 0.2), Schedule("chains", 80, 0.2, chain_len=3, wait_ms=5), Schedule("mooncake", 50, 1.0)):
        assert v.check(mrw_trace(s).to_dict()) == []
        rows = [orjson.loads(x) for x in write_aiperf(s, tmp_path / "a.jsonl").read_bytes().splitlines()]
        assert len(rows) == s.n_calls
        assert sum("timestamp" in r for r in rows) == s.n_workflows
    vl = write_vllm(Schedule("independent", 50, 0.2), tmp_path / "v.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["timestamp"] for x in vl][:2] == [0.0, 0.02]


def test_mooncake_like_schedule_has_bursts_long_prompts_and_shared_blocks() -> None:
    s = Schedule("mooncake", 25, 12)
    reqs = mooncake_requests(s)
    assert len(reqs) == s.n_calls == 300 and [r.t for r in reqs] == sorted(r.t for r in reqs)
    bursts: dict[float, list] = {}
    for r in reqs:
        bursts.setdefault(r.t, []).append(r)
    assert max(len(b) for b in bursts.values()) == 16 and sum(len(b) > 10 for b in bursts.values()) >= 5
    assert all([r.position for r in b] == list(range(len(b))) for b in bursts.values())
    assert all(10_000 <= r.input_length <= 130_000 and len(r.hash_ids) == -(-r.input_length // 512) for r in reqs)
    assert sum(r.input_length > 100_000 for r in reqs) >= 3
    firsts = [r.hash_ids[0] for r in reqs]
    assert len(set(firsts)) < len(firsts) / 2  # most prompts continue a conversation: shared block prefixes


def test_burst_lateness_by_position() -> None:
    s = Schedule("mooncake", 25, 1.2)  # 30 requests
    reqs = mooncake_requests(s)
    late = [0.1 + r.position for r in reqs]  # a tool that slows by 1 ms per position
    got = replay_bench.burst_lateness(s, late)
    assert got["burst_position_ms"]["0"]["p50"] == pytest.approx(0.1)
    assert got["burst_position_ms"]["5"]["p50"] == pytest.approx(5.1) or got["burst_position_ms"]["5"]["n"] == 0
    big = max(reqs, key=lambda r: r.input_length)
    assert got["largest_prompt"]["tokens"] == big.input_length and got["largest_prompt"]["late_ms"] == pytest.approx(0.1 + big.position)


def test_lateness_from_server_log() -> None:
    s = Schedule("chains", 100, 0.04, chain_len=2, wait_ms=1)  # 2 workflows, 0.02 s apart
    ms = 1_000_000
    log = [  # w1's root is 3 ms late; w0.c1 arrives 0.5 ms after its dependency's end + wait
        {"api": "chat", "id": "w0.c0", "arrive_ns": 100 * ms, "end_ns": 101 * ms},
        {"api": "chat", "id": "w0.c1", "arrive_ns": 102 * ms + ms // 2, "end_ns": 103 * ms},
        {"api": "chat", "id": "w1.c0", "arrive_ns": 123 * ms, "end_ns": 124 * ms},
        {"api": "chat", "id": "w1.c1", "arrive_ns": 125 * ms, "end_ns": 126 * ms},
    ]
    la = replay_bench.lateness(s, log)
    assert la["received"] == 4
    assert la["roots_ms"]["max"] == pytest.approx(3.0)
    assert la["dependent_ms"]["n"] == 2 and la["dependent_ms"]["max"] == pytest.approx(0.5)  # w1.c1 reacts at once


@pytest.mark.skipif(shutil.which("node") is None, reason="the zero server needs node")
def test_replay_bench_runs_end_to_end(tmp_path) -> None:
    out = tmp_path / "r.json"
    rc = replay_bench.main(["--rates", "50", "--chain-rates", "40", "--chain-len", "2", "--duration", "0.5", "--tools", "mrw",
                            "--mooncake-rates", "40", "--mooncake-duration", "0.5", "--mooncake-max-prompt", "20000",
                            "--no-ceiling", "--port", str(free_port()), "--out", str(out)])
    assert rc == 0
    res = orjson.loads(out.read_bytes())
    runs = [r for r in res["runs"] if not r.get("skipped")]
    assert [r["schedule"]["kind"] for r in runs] == ["independent", "chains", "mooncake"]
    moon = runs[2]
    assert set(moon["lateness"]["burst_position_ms"]) == {"0", "5", "10"} and moon["lateness"]["largest_prompt"]["tokens"] >= 10_000
    assert moon["own_report"]["prompts"]["calls"]["token_ids"] == 20 and moon["own_report"]["prompts"]["built_at_issue"] == 0
    for r in runs:
        assert r["returncode"] == 0, r.get("log_tail")
        assert r["lateness"]["received"] == r["schedule"]["n_calls"]
        assert r["own_report"]["ok"] == r["schedule"]["n_calls"]
        assert r["client"]["cpu_s_total"] > 0
        st = r["server_stall_ms"]  # the server's own event-loop delays, from its 1 ms timer
        assert st["samples"] > 100 and 0 <= st["p50_ms"] <= st["p99_ms"] <= st["max_ms"]
    assert "| independent@50/s | mrw |" in replay_bench.table(res) and "| mooncake-like@40/s | mrw |" in replay_bench.table(res)


def test_trace_io_runs_and_reports_planted_problems(tmp_path) -> None:
    out = tmp_path / "t.json"
    assert trace_io.main(["--calls", "2000", "--repeat", "1", "--out", str(out)]) == 0
    res = orjson.loads(out.read_bytes())
    assert res["valid"][0]["ok"] and res["valid"][0]["calls"] == 2000
    assert res["invalid_all_found"]

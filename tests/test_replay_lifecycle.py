"""Replay against a real vLLM: interrupts, engine death, knobs with --url, live refs,
Poisson arrivals. What matters each time: the one line a user sees, the exit code, and a
run directory that is complete (every call has a line) and that `mrw analyze` reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

from mrw.analysis.summary import summarize
from mrw.replay.scheduler import ReplayOptions, arrival_times
from mrw.trace import load


pytestmark = pytest.mark.vllm


def mrw(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrw", *args], capture_output=True, text=True, timeout=timeout)


def start_replay(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mrw", "replay", "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_replay(p: subprocess.Popen) -> None:
    """After a failed assertion: SIGTERM first, so mrw stops the vLLM it launched (a SIGKILL
    would orphan it), then SIGKILL if it does not go."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and len(path.read_bytes().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"replay ended early: {proc.returncode} {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError(f"no {n} request lines in {path} after {timeout} s")


def rows_of(run: Path) -> list[dict]:
    return [orjson.loads(l) for l in (run / "requests.jsonl").read_bytes().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_leaves_an_interrupted_run_that_analyze_reads(sig, vllm_url, long_trace, tmp_path):
    run = tmp_path / "run"
    p = start_replay(str(long_trace), "--url", vllm_url, "-o", str(run))
    wait_lines(run / "requests.jsonl", 1, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    meta = orjson.loads((run / "run.json").read_bytes())
    assert meta["status"] == "interrupted" and meta["error"] == f"interrupted by {signal.Signals(sig).name}"
    rows = rows_of(run)
    trace = load(long_trace)
    assert sorted(r["call_id"] for r in rows) == sorted(c.id for _, c in trace.calls())
    done = [r for r in rows if r["ok"]]
    rest = [r for r in rows if not r["ok"]]
    assert done and rest
    assert all(r["error"].startswith(f"not finished: interrupted by {signal.Signals(sig).name}") for r in rest)
    assert all(r["output_tokens"] == r["expected_output_tokens"] for r in done)
    a = mrw("analyze", str(run))
    assert a.returncode == 0, a.stderr
    assert "interrupted" in a.stdout
    s = orjson.loads((run / "summary.json").read_bytes())
    assert s["status"] == "interrupted" and s["requests"]["not_finished"] == len(rest) and s["requests"]["ok"] == len(done)


def test_engine_killed_mid_run(tiny, long_trace, tmp_path):
    """mrw launches vLLM (embedded), the test kills the vLLM server process under the running
    replay: one clear error line, finished requests on disk, the rest marked, exit 1, and no
    process left behind (the server's workers included)."""
    run = tmp_path / "run"
    p = start_replay(str(long_trace), "--model", str(tiny.path), "--max-model-len", "4096", "--max-num-seqs", "4",
                     "--no-prefix-caching", "-o", str(run), "--request-timeout", "60")
    try:
        wait_lines(run / "requests.jsonl", 1, p, timeout=600)
        tree = psutil.Process(p.pid).children(recursive=True)
        server = [q for q in tree if "vllm.entrypoints.openai.api_server" in " ".join(q.cmdline())]
        assert len(server) == 1 and len(tree) >= 2, [q.cmdline() for q in tree]
        t_kill = time.monotonic()
        server[0].kill()
        _, err = p.communicate(timeout=90)
        took = time.monotonic() - t_kill
    finally:
        stop_replay(p)
    assert p.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mrw: error: engine died mid-run: the vLLM that mrw launched exited") and str(run) in lines[0]
    assert took < 45
    meta = orjson.loads((run / "run.json").read_bytes())
    assert meta["status"] == "failed" and meta["error"].startswith("engine died mid-run")
    assert (run / "engine.log").stat().st_size > 0 and meta["files"]["engine_log"] == "engine.log"
    # The knobs became launch flags, and the server itself reports the prefix-caching one.
    eng = meta["engine"]
    assert eng["mode"] == "embedded" and eng["knobs_applied"] == {"max_num_seqs": 4, "prefix_caching": False, "max_model_len": 4096}
    flags = " ".join(eng["launch_flags"])
    assert "--max-num-seqs 4" in flags and "--no-enable-prefix-caching" in flags and "--max-model-len 4096" in flags
    assert eng["cache_config"]["enable_prefix_caching"] == "False"
    rows = rows_of(run)
    trace = load(long_trace)
    assert sorted(r["call_id"] for r in rows) == sorted(c.id for _, c in trace.calls())
    done = [r for r in rows if r["ok"]]
    rest = [r for r in rows if not r["ok"]]
    assert done and rest
    errors = [r["error"] for r in rest]
    assert all(e.startswith("not finished: engine died: the vLLM that mrw launched exited") for e in errors), errors
    assert all(r["t_end"] is not None and r["output_tokens"] == r["expected_output_tokens"] for r in done)
    s = summarize(run)
    assert s["status"] == "failed" and s["requests"]["ok"] == len(done)
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"left behind: {[(q.pid, q.cmdline()) for q in alive]}"


def test_interrupt_while_the_engine_starts_leaves_nothing_running(tiny, small_trace, tmp_path):
    run = tmp_path / "run"
    p = start_replay(str(small_trace), "--model", str(tiny.path), "--max-model-len", "4096", "-o", str(run))
    try:
        server = []
        t0 = time.monotonic()
        while not server and time.monotonic() - t0 < 60:
            time.sleep(0.2)
            tree = psutil.Process(p.pid).children(recursive=True)
            server = [q for q in tree if "vllm.entrypoints.openai.api_server" in " ".join(q.cmdline())]
        assert server, "mrw did not launch vLLM"
        time.sleep(1.0)  # vLLM is importing, far from healthy
        tree = [server[0], *server[0].children(recursive=True)]
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        stop_replay(p)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("mrw: interrupted")
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive, f"left behind: {[(q.pid, q.cmdline()) for q in alive]}"
    meta = orjson.loads((run / "run.json").read_bytes())
    assert meta["status"] == "interrupted" and "before the replay began" in meta["error"]
    rows = rows_of(run)
    assert len(rows) == load(small_trace).n_calls and not any(r["ok"] for r in rows)
    assert mrw("analyze", str(run)).returncode == 0


def test_knobs_with_url_are_verified_or_refused(vllm_url, small_trace, tmp_path):
    r = mrw("replay", str(small_trace), "--url", vllm_url, "--max-num-seqs", "4", "-o", str(tmp_path / "a"))
    assert r.returncode == 1 and not (tmp_path / "a").exists()
    assert "--max-num-seqs 4: cannot be applied to the vLLM at" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = mrw("replay", str(small_trace), "--url", vllm_url, "--no-prefix-caching", "-o", str(tmp_path / "b"))
    assert r.returncode == 1 and "runs with --prefix-caching" in r.stderr and not (tmp_path / "b").exists()
    r = mrw("replay", str(small_trace), "--url", vllm_url, "--engine-arg", "--seed 3", "-o", str(tmp_path / "c"))
    assert r.returncode == 1 and "--engine-arg" in r.stderr


def test_verified_knobs_and_poisson_arrivals(vllm_url, small_trace, tmp_path):
    run = tmp_path / "run"
    r = mrw("replay", str(small_trace), "--url", vllm_url, "--prefix-caching", "--max-model-len", "4096",
            "--rate", "4", "--seed", "7", "-q", "-o", str(run))
    assert r.returncode == 0, r.stderr
    meta = orjson.loads((run / "run.json").read_bytes())
    assert meta["knobs"] == {"prefix_caching": True, "max_model_len": 4096}
    assert meta["engine"]["knobs_applied"] == {"prefix_caching": True, "max_model_len": 4096}
    trace = load(small_trace)
    want = dict(zip((w.id for w in trace.workflows), arrival_times(trace.workflows, ReplayOptions(rate=4, seed=7))))
    for row in rows_of(run):
        assert row["t_arrival"] == pytest.approx(want[row["workflow_id"]])
        assert row["t_issue"] - row["t_scheduled"] < 0.25  # dispatch lateness stays small


def test_live_refs_splice_the_live_output(vllm_url, small_trace, replay_model_dir, tmp_path):
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    r = mrw("replay", str(small_trace), "--url", vllm_url, "--live-refs", "--save-outputs", "--workflows", "1", "-q", "-o", str(run))
    assert r.returncode == 0, r.stderr
    rows = {x["call_id"]: x for x in rows_of(run)}
    assert set(rows) == {"doc-0/c0", "doc-0/c1", "doc-0/c2"}
    meta = orjson.loads((run / "run.json").read_bytes())
    assert any("--live-refs" in n for n in meta["fidelity"]["notes"])
    # The prompt vLLM saw for c1 is c1's template with c0's *live* output spliced in.
    trace = load(small_trace)
    c1 = trace.workflows[0].calls[1]
    tok = AutoTokenizer.from_pretrained(replay_model_dir)
    ids = tok.apply_chat_template(c1.render_messages({"doc-0/c0": rows["doc-0/c0"]["output"]}), add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert rows["doc-0/c1"]["input_tokens"] == len(ids)
    assert rows["doc-0/c0"]["output"] != trace.workflows[0].calls[0].output


def test_many_concurrent_workflows_respect_dependencies(vllm_url, replay_model_dir, tmp_path):
    """40 copies of the chain + fan-out workflows, all arriving at once, no waits: the engine
    is saturated and the scheduler must still issue no call before its dependencies ended."""
    from msgspec.structs import replace

    from mrw.trace import Trace, Workflow, dump

    from replay_fixtures import build_trace

    base = build_trace(replay_model_dir, out_tokens=(4, 5, 6, 4, 5, 5, 4))
    wfs = []
    for k in range(40):
        for w in base.workflows:
            ren = {c.id: f"{c.id}#{k}" for c in w.calls}
            calls = []
            for c in w.calls:
                msgs = [replace(m, content=[{"ref": ren[s["ref"]]} if "ref" in s else s for s in m.content]) for m in c.messages]
                calls.append(replace(c, id=ren[c.id], deps=[ren[d] for d in c.deps], messages=msgs))
            wfs.append(Workflow(f"{w.id}#{k}", 0.0, calls))
    path = dump(Trace(base.header, wfs), tmp_path / "many.json")
    run = tmp_path / "run"
    r = mrw("replay", str(path), "--url", vllm_url, "--wait-scale", "0", "-q", "-o", str(run), timeout=600)
    assert r.returncode == 0, r.stderr
    rows = {x["call_id"]: x for x in rows_of(run)}
    assert len(rows) == 280 and all(x["ok"] for x in rows.values())
    for x in rows.values():
        for d in x["deps"]:
            assert x["t_issue"] >= rows[d]["t_end"]
        assert x["output_tokens"] == x["expected_output_tokens"] and x["input_tokens"] == x["expected_input_tokens"]
    # the engine really ran them concurrently: streams overlap (from each one's first token to
    # its last). Not vLLM's num_requests_running: scraped every 0.5 s, it can miss a run that
    # a warm server finishes in under a second (it did, in a full test session).
    ends = sorted([(x["t_first_token"], 1) for x in rows.values()] + [(x["t_end"], -1) for x in rows.values()])
    streaming = [0]
    for _, step in ends:
        streaming.append(streaming[-1] + step)
    assert max(streaming) >= 4, max(streaming)
    assert summarize(run)["engine_metrics"]["num_requests_running"]["max"] <= 16  # --max-num-seqs of the server


def test_run_hooks_share_the_clock_and_see_the_end(vllm_url, small_trace, tmp_path):
    """The seam the energy meters use: begin() before t0 (may set it), end() on the way out."""
    from mrw.replay.driver import RunHook, replay
    from mrw.replay.engines.base import EngineOptions

    seen: list = []

    class Probe(RunHook):
        def begin(self, run_dir, engine):
            seen.append(("begin", run_dir, engine.name))
            self.t0 = time.perf_counter()
            return self.t0

        def end(self, status, error):
            seen.append(("end", status, error))

    probe = Probe()
    out = replay(small_trace, "vllm", EngineOptions(url=vllm_url), ReplayOptions(max_workflows=1), tmp_path / "run", hooks=[probe])
    assert out.status == "completed"
    assert seen == [("begin", tmp_path / "run", "vllm"), ("end", "completed", None)]
    meta = orjson.loads((tmp_path / "run" / "run.json").read_bytes())
    assert meta["clock"]["t0_perf_counter"] == probe.t0
    first = min(r["t_issue"] for r in rows_of(tmp_path / "run"))
    assert 0 <= first < 5  # requests are timed from the hook's t0 (not from an absolute clock)

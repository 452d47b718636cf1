"""Each workload recorded against a real vLLM (the session's shared server): the trace
validates and has the intended shape. Sizes are small so the suite stays fast on 2 CPUs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrw import validate
from mrw.generators.coding_agents import CodingParams
from mrw.generators.composite import CompositeParams
from mrw.generators.copilot import CopilotParams
from mrw.generators.session import RecordOptions, record_workload
from mrw.generators.summarization import SummarizationParams
from mrw.info import trace_info, workflow_shape
from mrw.trace import Trace, load

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parent.parent


def _record(server, tmp_path: Path, name: str, params, **kw) -> Trace:
    out = tmp_path / f"{name}.json.gz"
    opts = RecordOptions(base_url=server.base_url, out=out, progress=False, **kw)
    trace = record_workload(name, params, opts)
    again = load(out)  # what is on disk validates and is what was returned
    assert again.to_dict() == trace.to_dict()
    return again


def _common_checks(trace: Trace) -> None:
    assert validate.check(trace.to_dict()) == []
    h = trace.header
    assert h.recorded_against["engine"] == "vllm" and h.recorded_against["engine_version"]
    assert h.recorded_against["model"] == "tiny-llama"
    assert "api_key" not in str(h.to_dict()).lower()
    for _, c in trace.calls():
        assert c.t_issue <= c.t_first_token <= c.t_end
        assert c.input_tokens > 0 and c.wait_s >= 0


def _rebuilt_prompts_match(server, trace: Trace) -> None:
    """Every prompt rebuilt from its segments (recorded upstream text spliced into the refs)
    is the prompt that was sent: the server counts the same input tokens."""
    import httpx

    outputs = trace.recorded_outputs()
    with httpx.Client(timeout=120) as c:
        for _, call in trace.calls():
            r = c.post(f"{server.base_url}/chat/completions",
                       json={"model": trace.header.recorded_against["model"], "max_tokens": 1,
                             "messages": call.render_messages(outputs)})
            assert r.json()["usage"]["prompt_tokens"] == call.input_tokens, call.id


def test_summarization_chain_depth_equals_chunks(vllm_server, tmp_path):
    p = SummarizationParams(workflows=2, chunk_tokens=128, summary_tokens=24, max_chunks=4)
    trace = _record(vllm_server, tmp_path, "summarization", p)
    _common_checks(trace)
    assert trace.header.generator["params"]["chunk_tokens"] == 128
    assert trace.header.extra["recording"]["chunking"].startswith("local:")
    assert len(trace.workflows) == 2
    for w in trace.workflows:
        n = w.tags["chunks"]
        assert n == 4 and len(w.calls) == n
        shape = workflow_shape(w)
        assert (shape.depth, shape.width) == (n, 1)
        assert [c.node for c in w.calls] == ["summarize"] + ["refine"] * (n - 1)
        for prev, c in zip(w.calls, w.calls[1:]):
            assert c.deps == [prev.id] and c.refs() == [prev.id]
            assert c.wait_s < 1.0  # no tool between refine steps: only graph overhead
        assert all(c.output_tokens == 24 for c in w.calls)  # exact lengths (min_tokens)
    _rebuilt_prompts_match(vllm_server, trace)


def test_summarization_map_reduce_fans_in(vllm_server, tmp_path):
    p = SummarizationParams(workflows=1, mode="map-reduce", chunk_tokens=128, summary_tokens=16, max_chunks=5)
    trace = _record(vllm_server, tmp_path, "summarization", p)
    _common_checks(trace)
    (w,) = trace.workflows
    maps = [c for c in w.calls if c.node == "map"]
    (reduce,) = [c for c in w.calls if c.node == "reduce"]
    assert len(maps) == 5 and all(c.deps == [] for c in maps)
    assert sorted(reduce.deps) == sorted(c.id for c in maps) and sorted(reduce.refs()) == sorted(reduce.deps)
    assert (workflow_shape(w).depth, workflow_shape(w).width) == (2, 5)
    assert max(c.t_issue for c in maps) < min(c.t_end for c in maps)  # the maps really ran in parallel


def test_copilot_shares_the_system_prompt_and_measures_waits(vllm_server, tmp_path):
    p = CopilotParams(workflows=3, rate=2.0, followups=1, think_time_s=0.3, system_tokens=1200,
                      answer_tokens_min=8, answer_tokens_max=16, rewrite_tokens=12, top_k=2)
    trace = _record(vllm_server, tmp_path, "copilot", p)
    _common_checks(trace)
    info, _ = trace_info(trace)
    assert info.shared_prefix_share > 0.5  # the large shared system prompt dominates
    assert len({w.arrival_s for w in trace.workflows}) == 3  # Poisson arrivals, not a batch
    for w in trace.workflows:
        assert [c.node for c in w.calls] == ["rewrite", "answer", "rewrite", "answer"]
        r1, a1, r2, a2 = w.calls
        system = r1.messages[0]
        assert system.role == "system" and all(c.messages[0] == system for c in w.calls)
        assert r1.deps == [] and a1.deps == [r1.id]  # the answer holds the search query verbatim
        assert r2.deps == [a1.id]  # the follow-up carries the previous answer in its history
        assert set(a2.deps) == {a1.id, r2.id}
        assert r2.wait_s >= 0.0 and a1.wait_s < 1.0
    assert sum(w.calls[2].wait_s for w in trace.workflows) > 0.1  # think times were recorded


def test_coding_agents_rounds_parallel_files_and_tool_waits(vllm_server, tmp_path):
    p = CodingParams(workflows=1, rounds=2, max_files=3, pm_tokens=24, architect_tokens=24, code_tokens=32,
                     review_tokens=16, tool_timeout_s=5)
    trace = _record(vllm_server, tmp_path, "coding-agents", p)
    _common_checks(trace)
    (w,) = trace.workflows
    by_node: dict[str, list] = {}
    for c in w.calls:
        by_node.setdefault(c.node, []).append(c)
    assert {k: len(v) for k, v in by_node.items()} == {
        "product_manager": 1, "architect": 1, "engineer": 6, "reviewer": 6, "reviser": 6}
    shape = workflow_shape(w)
    assert (shape.depth, shape.width) == (2 + 3 * 2, 3)
    eng1, rev1 = by_node["engineer"][:3], by_node["reviewer"][:3]
    for r in rev1:  # every reviewer saw every file of the round, after the test run
        assert {e.id for e in eng1} <= set(r.deps)
        assert r.wait_s > 0.01  # a python subprocess ran the tests: real tool time
    eng2 = by_node["engineer"][3:]
    revisers1 = by_node["reviser"][:3]
    for e in eng2:
        assert {r.id for r in revisers1} <= set(e.deps) and e.wait_s > 0.01
    reviews1 = {r.id for r in rev1}
    for r in by_node["reviser"][:3]:  # revisers read all reviews: they start together, no false wait
        assert reviews1 <= set(r.deps) and r.wait_s < 1.0
    pm = by_node["product_manager"][0]
    assert all(pm.id in c.deps for c in w.calls if c.node != "product_manager")  # shared context
    _rebuilt_prompts_match(vllm_server, trace)


def test_composite_holds_every_kind_with_its_arrivals(vllm_server, tmp_path):
    p = CompositeParams(copilot_sessions=2, copilot_rate=2.0, summarization_workflows=1, summarization_rate=1.0,
                        coding_workflows=1, coding_rate=1.0, coding_rounds=1,
                        set="copilot.system_tokens=600,copilot.top_k=2,copilot.answer_tokens_min=8,copilot.answer_tokens_max=12,"
                            "copilot.followups=0,summarization.chunk_tokens=128,summarization.max_chunks=3,"
                            "summarization.summary_tokens=12,coding.max_files=2,coding.code_tokens=24,"
                            "coding.pm_tokens=16,coding.architect_tokens=16,coding.review_tokens=12")
    trace = _record(vllm_server, tmp_path, "composite", p)
    _common_checks(trace)
    kinds = [w.tags["kind"] for w in trace.workflows]
    assert sorted(kinds) == ["coding-agents", "copilot", "copilot", "summarization"]
    assert len({w.arrival_s for w in trace.workflows}) == 4
    assert all(w.arrival_s > 0 for w in trace.workflows)  # each kind's process starts after its own gap
    sm = next(w for w in trace.workflows if w.tags["kind"] == "summarization")
    assert sm.tags["mode"] == "map-reduce" and workflow_shape(sm).width == 3


def test_custom_graph_recorded_through_cli(vllm_server, tmp_path):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"topic": "the data model"}\n{"input": {"topic": "sorting"}, "id": "sorting", "tags": {"x": 1}}\n')
    out = tmp_path / "research.json"
    env = {**os.environ, "RESEARCH_MAX_TOKENS": "16"}
    r = subprocess.run([sys.executable, "-m", "mrw", "record", "--graph", "tests.graphs.research:graph",
                        "--inputs", str(inputs), "--base-url", vllm_server.base_url, "-o", str(out), "-q"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trace = load(out)
    assert trace.header.generator["params"]["graph"] == "tests.graphs.research:graph"
    assert {w.id for w in trace.workflows} == {"wf-000", "sorting"}
    for w in trace.workflows:
        nodes = {c.node: c for c in w.calls}
        assert set(nodes) == {"outline", "history", "uses", "merge"}
        assert nodes["history"].deps == [nodes["outline"].id] == nodes["uses"].deps
        assert sorted(nodes["merge"].deps) == sorted([nodes["history"].id, nodes["uses"].id])
        assert nodes["outline"].t_first_token is not None  # streamed: first token measured
        assert all(c.output_tokens == 16 for c in w.calls)
    assert next(w for w in trace.workflows if w.id == "sorting").tags["x"] == 1
    _rebuilt_prompts_match(vllm_server, trace)

    # ... and it replays: every call reissued in dependency order with the recorded lengths.
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "mrw", "replay", str(out), "--url", vllm_server.base_url, "-o", str(run),
                        "-q", "--time-scale", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    meta = json.loads((run / "run.json").read_text())
    reqs = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines() if line.strip()]
    assert meta["status"] == "completed" and len(reqs) == trace.n_calls
    assert all(q["input_tokens"] == q["expected_input_tokens"] for q in reqs)
    assert all(q["output_tokens"] == q["expected_output_tokens"] for q in reqs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_leaves_a_valid_trace_of_completed_workflows(vllm_server, tmp_path, sig):
    out = tmp_path / "partial.json"
    proc = subprocess.Popen([sys.executable, "-m", "mrw", "record", "summarization", "--base-url",
                             vllm_server.base_url, "-o", str(out), "-q", "--workflows", "40", "--concurrency", "1",
                             "--chunk-tokens", "128", "--summary-tokens", "8", "--max-chunks", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and load(out).workflows:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    trace = load(out)  # validates
    assert 1 <= len(trace.workflows) < 40
    assert trace.header.extra["recording"]["interrupted"] is True
    assert all(len(w.calls) == 2 for w in trace.workflows)  # only whole workflows

"""The engine conformance suite: every adapter replays the same small trace and passes the
same assertions (dependencies respected, token counts enforced or the gap recorded, timings
present, errors surfaced, the run directory analysable).

Add an engine by adding a case to ENGINE_CASES: a function of the pytest `request` that
returns (engine name, EngineOptions), fetching whatever server or test double it needs with
`request.getfixturevalue(...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import orjson
import pytest

from mrw.analysis.summary import summarize
from mrw.replay import run as runmod
from mrw.replay.driver import replay
from mrw.replay.engines.base import EngineOptions
from mrw.replay.scheduler import ReplayOptions
from mrw.trace import Call, Message, Workflow, dump, load

EngineCase = Callable[[pytest.FixtureRequest], tuple[str, EngineOptions]]

ENGINE_CASES: dict[str, EngineCase] = {
    "vllm": lambda rq: ("vllm", EngineOptions(url=rq.getfixturevalue("vllm_url"), request_timeout_s=120)),
    # The same vLLM seen as a generic OpenAI-compatible server: nothing declared, so output
    # lengths are not forced and the run must say so.
    "openai-generic": lambda rq: ("openai", EngineOptions(url=rq.getfixturevalue("vllm_url") + "/v1", request_timeout_s=120)),
    # Parrot, workflow-level: the Parrot test double (tests/parrot_double.py) in front of the
    # same vLLM, through the mrw backend proxy that forces lengths and reports usage.
    "parrot": lambda rq: (
        "parrot",
        EngineOptions(url=rq.getfixturevalue("parrot_double").url, request_timeout_s=120,
                      extra={"parrot_proxy_url": rq.getfixturevalue("backend_proxy").url}),
    ),
    # ... and with min_tokens/ignore_eos declared, as a user would for SGLang or vLLM.
    "openai-declared": lambda rq: (
        "openai",
        EngineOptions(url=rq.getfixturevalue("vllm_url") + "/v1", request_timeout_s=120, extra={"supports": ["min_tokens", "ignore_eos"]}),
    ),
}

BAD = "bad-0/too-long"
BAD_CHILD = "bad-0/after"


CMPL = "cmpl-0/complete"
CMPL_PROMPT = "The three primary colours of light are red, green and"


def conformance_trace(small: Path, out: Path, model_dir: str) -> Path:
    """The small trace, plus a completions-API (prompt, not chat) call, plus a workflow whose
    first call the engine must reject (it asks for more output tokens than the model's
    context), with a dependent that must not run."""
    from transformers import AutoTokenizer

    t = load(small)
    n_prompt = len(AutoTokenizer.from_pretrained(model_dir)(CMPL_PROMPT)["input_ids"])
    t.workflows.append(Workflow("cmpl-0", 0.1, [Call(CMPL, "complete", [], 0.0, n_prompt, 9, prompt=[{"text": CMPL_PROMPT}], output=" blue")]))
    sys_msg = Message("system", [{"text": "You are a concise assistant."}])
    t.workflows.append(
        Workflow("bad-0", 0.2, [
            Call(BAD, "writer", [], 0.0, 20, 100_000, messages=[sys_msg, Message("user", [{"text": "Write a long essay."}])], output="x"),
            Call(BAD_CHILD, "editor", [BAD], 0.0, 30, 8, messages=[sys_msg, Message("user", [{"text": "Edit: "}, {"ref": BAD}])], output="y"),
        ])
    )
    dump(t, out)
    return out


@pytest.fixture(scope="module", params=sorted(ENGINE_CASES))
def conformance_run(request, small_trace, replay_model_dir, tmp_path_factory):
    """(case name, run dir, run.json, rows by call id, the trace) for one engine case."""
    name, opts = ENGINE_CASES[request.param](request)
    d = tmp_path_factory.mktemp(f"conf-{request.param}")
    trace_path = conformance_trace(small_trace, d / "trace.json", replay_model_dir)
    outcome = replay(trace_path, name, opts, ReplayOptions(), d / "run")
    meta = orjson.loads((outcome.run_dir / runmod.RUN_JSON).read_bytes())
    rows = [orjson.loads(l) for l in (outcome.run_dir / runmod.REQUESTS).read_bytes().splitlines()]
    return request.param, outcome.run_dir, meta, rows, load(trace_path)


pytestmark = pytest.mark.vllm


def test_every_call_has_exactly_one_result(conformance_run):
    _, _, meta, rows, trace = conformance_run
    ids = [r["call_id"] for r in rows]
    assert sorted(ids) == sorted(c.id for _, c in trace.calls())
    assert meta["status"] == "completed" and meta["ended"]
    assert meta["progress"] == {"total": trace.n_calls, "finished": trace.n_calls, "failed": 2}


def test_dependencies_respected(conformance_run):
    _, _, meta, rows, trace = conformance_run
    by = {r["call_id"]: r for r in rows}
    call_level = not meta["capabilities"]["whole_workflow"]
    for _, c in trace.calls():
        r = by[c.id]
        if not r["ok"] or r["t_issue"] is None:
            continue
        for d in c.deps:
            assert by[d]["ok"], f"{c.id} ran although its dependency {d} failed"
            assert r["t_issue"] >= by[d]["t_end"] - 1e-6, f"{c.id} issued before {d} ended"
            if call_level:  # the recorded wait is honoured too
                assert r["t_issue"] >= by[d]["t_end"] + c.wait_s - 1e-3


def test_token_counts_enforced_or_gap_recorded(conformance_run):
    case, _, meta, rows, _ = conformance_run
    ok = [r for r in rows if r["ok"]]
    assert len(ok) == len(rows) - 2
    if meta["capabilities"]["exact_output_length"]:
        assert meta["fidelity"]["output_length_forced"]
        assert [(r["call_id"], r["output_tokens"]) for r in ok] == [(r["call_id"], r["expected_output_tokens"]) for r in ok]
        assert meta["token_check"]["output_mismatch"] == 0
    else:
        assert not meta["fidelity"]["output_length_forced"]
        assert any("not forced" in n for n in meta["fidelity"]["notes"])
        assert all(r["output_tokens"] <= r["expected_output_tokens"] for r in ok)  # capped at least
        mism = sum(r["output_tokens"] != r["expected_output_tokens"] for r in ok)
        assert meta["token_check"]["output_mismatch"] == mism
    if meta["fidelity"]["input_length_checked"]:
        # The trace's input counts were made with this model's tokenizer and chat template.
        assert all(r["input_tokens"] == r["expected_input_tokens"] for r in ok), [(r["call_id"], r["input_tokens"], r["expected_input_tokens"]) for r in ok]


def test_timings_present(conformance_run):
    _, _, meta, rows, _ = conformance_run
    for r in (r for r in rows if r["ok"]):
        assert r["t_end"] is not None and r["t_arrival"] is not None
        assert r["t_end"] >= (r["t_issue"] if r["t_issue"] is not None else r["t_arrival"])
        if meta["fidelity"]["ttft_measured"]:
            assert r["t_issue"] <= r["t_first_token"] <= r["t_end"]
            assert len(r["token_times"]) >= 1 and r["token_times"][0] == r["t_first_token"]
        else:
            assert r["t_first_token"] is None


def test_errors_surfaced(conformance_run):
    _, _, _, rows, _ = conformance_run
    by = {r["call_id"]: r for r in rows}
    bad = by[BAD]
    assert not bad["ok"] and bad["error"] and ("HTTP 400" in bad["error"] or "max" in bad["error"].lower())
    assert not by[BAD_CHILD]["ok"] and by[BAD_CHILD]["error"]


def test_analyze_reads_the_run(conformance_run):
    _, run_dir, meta, rows, _ = conformance_run
    s = summarize(run_dir)
    assert s["requests"]["ok"] == sum(r["ok"] for r in rows)
    assert s["requests"]["failed"] + s["requests"]["skipped"] == 2
    assert s["latency"]["e2e_s"]["n"] == s["requests"]["ok"]
    assert s["workflows"]["complete"] == 3 and s["workflows"]["count"] == 4
    assert s["throughput"]["output_tokens_per_s"] > 0
    assert (run_dir / "summary.json").exists()
    if meta["capabilities"]["metrics_endpoint"]:
        assert s["engine_metrics"]["samples"] >= 2

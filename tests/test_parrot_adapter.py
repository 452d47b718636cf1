"""The Parrot adapter: how trace calls become semantic calls (no server), and whole workflows
replayed through the Parrot double in front of the session's real vLLM, with the mrw backend
proxy forcing lengths and recording what reached the backend."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from parrot_double import ParrotDouble, ProxyProcess

from mrw.errors import EngineError, EngineUnreachable
from mrw.replay.engines import parrot as P
from mrw.replay.engines.base import CallResult, Request
from mrw.trace import Call, Message, Workflow

SYS = "You are a meticulous assistant. Answer briefly and precisely. " * 8


def req(c: Call, wid: str) -> Request:
    return Request(c.id, wid, c.node, max_tokens=c.output_tokens, min_tokens=c.output_tokens, expected_input_tokens=c.input_tokens)


def run(engine: P.ParrotEngine, *wfs: Workflow, start: bool = True) -> tuple[list[CallResult], list[BaseException]]:
    results: list[CallResult] = []

    async def sink(r: CallResult) -> None:
        results.append(r)

    async def main():
        if start:
            await engine.start()
        try:
            return await asyncio.gather(
                *(engine.run_workflow(w, {c.id: req(c, w.id) for c in w.calls}, sink) for w in wfs), return_exceptions=True
            )
        finally:
            await engine.close()

    outcome = asyncio.run(main())
    return results, [e for e in outcome if isinstance(e, BaseException)]


def chain_and_fanout() -> Workflow:
    """a -> b (b splices a) ; three fan-out calls sharing SYS ; join waits 0.6 s for a tool and
    splices the fan-out ; late depends on b without splicing it (an ordering edge)."""
    calls = [
        Call("a", "draft", output_tokens=9, messages=[Message("system", [{"text": SYS}]), Message("user", [{"text": "Name a river."}])]),
        Call("b", "refine", deps=["a"], output_tokens=7, messages=[Message("system", [{"text": SYS}]), Message("user", [{"text": "Refine: "}, {"ref": "a"}])]),
        *[Call(f"f{i}", "fan", output_tokens=5 + i, messages=[Message("system", [{"text": SYS}]), Message("user", [{"text": f"Question {i}?"}])]) for i in range(3)],
        Call("join", "join", deps=["f0", "f1", "f2"], wait_s=0.6, output_tokens=6, prompt=[{"text": "Join: "}, {"ref": "f0"}, {"text": "|"}, {"ref": "f1"}, {"text": "|"}, {"ref": "f2"}]),
        Call("late", "after", deps=["b"], output_tokens=4, prompt=[{"text": "Afterwards, say {{done}}."}]),
    ]  # fmt: skip
    return Workflow("w", 0.0, calls)


# ---------------------------------------------------------------------------- planning


def test_chat_call_becomes_one_template_with_the_system_prompt_as_constant_prefix() -> None:
    c = chain_and_fanout().by_id()["b"]
    sc = P.plan_call(c, Request("b", "w", "refine", max_tokens=7, sampling={"temperature": 0.3, "seed": 1}))
    body = sc.payload({"session_id": 0, "session_auth": "1"}, {"a": "VAR-A"}, criteria="latency")
    assert body["template"] == SYS + "{{lit1}}{{in2}}{{out}}"  # SYS alone before the first placeholder
    assert body["parameters"] == [
        {"name": "lit1", "is_output": False, "value": "\n\nRefine: "},
        {"name": "in2", "is_output": False, "var_id": "VAR-A"},
        {"name": "out", "is_output": True, "sampling_config": {"max_gen_length": 7, "ignore_tokenizer_eos": True, "temperature": 0.3}},
    ]
    assert body["model_type"] == "text" and body["output_criteria"] == "latency"
    assert sc.dropped_sampling == ["seed"]
    assert sc.prompt({"a": "Nile"}) == SYS + "\n\nRefine: Nile"


def test_literal_placeholders_are_passed_as_values() -> None:
    c = Call("x", "n", output_tokens=3, prompt=[{"text": "Keep {{this}} literally {{and_this}}"}])
    body = P.plan_call(c, None).payload({}, {})
    assert body["template"] == "Keep {{lit1}}{{out}}"
    assert body["parameters"][0]["value"] == "{{this}} literally {{and_this}}"
    assert P.PLACEHOLDER.findall(body["template"]) == ["{{lit1}}", "{{out}}"]


def test_control_dependencies_and_zero_length_outputs() -> None:
    w = chain_and_fanout().by_id()
    assert P.control_deps(w["late"], P.plan_call(w["late"], None)) == ["b"]
    assert P.control_deps(w["b"], P.plan_call(w["b"], None)) == []
    assert P.plan_call(Call("z", "n", output_tokens=0, prompt=[{"text": "x"}]), None).max_gen_length == 1


# ---------------------------------------------------------------------------- through the double



@pytest.mark.vllm
def test_workflow_replays_with_exact_lengths_and_respected_dependencies(parrot_double, backend_proxy) -> None:
    wf = chain_and_fanout()
    before = backend_proxy.count()
    eng = P.ParrotEngine(parrot=P.ParrotOptions(parrot_double.url, proxy_url=backend_proxy.url))
    results, errors = run(eng, wf)
    assert errors == []
    by = {r.call_id: r for r in results}
    assert set(by) == {c.id for c in wf.calls} and all(r.ok for r in results)
    calls = wf.by_id()
    for r in results:
        c = calls[r.call_id]
        assert r.output_tokens == r.expected_output_tokens == c.output_tokens  # forced by the proxy
        assert r.input_tokens and r.input_tokens > 0
        assert r.t_first_token is None and r.ttft is None  # Parrot does not stream
        assert r.extra["t_submit"] <= r.extra["backend_t_start"] < r.extra["backend_t_end"] <= r.t_end
        for d in c.deps:  # the backend saw the dependency finish before the call started
            assert by[d].extra["backend_t_end"] <= r.extra["backend_t_start"]
            assert by[d].t_end <= r.t_issue <= r.t_end
            if c.wait_s or c.id == "late":  # submitted by mrw after the dependency answered
                assert by[d].t_end <= r.extra["t_submit"] <= r.extra["backend_t_start"]
            else:  # Parrot started it itself, once the spliced outputs existed
                assert by[d].extra["backend_t_end"] <= r.extra["t_ready"] <= r.extra["backend_t_start"]
    join = by["join"]
    assert join.extra["t_submit"] >= max(by[d].t_end for d in calls["join"].deps) + 0.6
    assert join.t_scheduled == pytest.approx(max(by[d].t_end for d in calls["join"].deps) + 0.6, abs=1e-6)
    # What the backend got: one merged user message, upstream text spliced in, literals intact.
    sent = [(r["request"]["messages"], r["output"]) for r in backend_proxy.records(before)]
    assert ([{"role": "user", "content": SYS + "\n\nRefine: " + by["a"].output}], by["b"].output) in sent
    assert ([{"role": "user", "content": "Afterwards, say {{done}}."}], by["late"].output) in sent
    # The session is gone afterwards.
    sid = by["a"].extra["parrot_session"]
    r = httpx.request("DELETE", f"{parrot_double.url}/v1/session/{sid}", json={"session_id": sid, "session_auth": "1"})
    assert "not found" in r.json()["error"]
    f = eng.fidelity()
    assert f.output_length_forced and not f.ttft_measured
    assert any("flattened" in n for n in f.notes) and any("wait_s" in n for n in f.notes)


@pytest.mark.vllm
def test_without_the_proxy_lengths_are_not_forced_and_say_so(parrot_double) -> None:
    eng = P.ParrotEngine(parrot=P.ParrotOptions(parrot_double.url, preflight=False))
    w = Workflow("solo", 0.0, [Call("s", "n", output_tokens=5, prompt=[{"text": "Say one thing."}])])
    results, errors = run(eng, w)
    assert errors == [] and results[0].ok and results[0].output_tokens is None
    f = eng.fidelity()
    assert not f.output_length_forced and not f.input_length_checked
    assert any("not forced" in n for n in f.notes)


@pytest.mark.vllm
def test_parrot_refusal_surfaces_its_message(parrot_double, monkeypatch) -> None:
    real = P.SemanticCall.payload

    def with_max_tokens(self, *a, **kw):
        body = real(self, *a, **kw)
        body["parameters"][-1]["sampling_config"]["max_tokens"] = 5  # Parrot wants max_gen_length
        return body

    monkeypatch.setattr(P.SemanticCall, "payload", with_max_tokens)
    eng = P.ParrotEngine(parrot=P.ParrotOptions(parrot_double.url, preflight=False))
    w = Workflow("bad", 0.0, [Call("s", "n", output_tokens=5, prompt=[{"text": "Hi"}]), Call("t", "n", deps=["s"], output_tokens=5, prompt=[{"ref": "s"}])])
    results, errors = run(eng, w)
    assert errors == []  # reported per call, not raised: the other workflows go on
    by = {r.call_id: r for r in results}
    assert set(by) == {"s", "t"} and not any(r.ok for r in results)
    assert "Parrot refused call s: SamplingConfig.__init__() got an unexpected keyword argument 'max_tokens'" in by["s"].error
    assert by["s"].extra["error_kind"] == "parrot"


@pytest.mark.vllm
def test_a_hang_ends_with_a_clear_error_not_forever(parrot_double) -> None:
    # models naming no registered engine: Parrot accepts the call and never runs it.
    opts = P.ParrotOptions(parrot_double.url, models=["no-such-model"], preflight=False, stall_timeout_s=2.0, probe_interval_s=0.5)
    w = Workflow("hang", 0.0, [Call("s", "n", output_tokens=5, prompt=[{"text": "Hi"}])])
    t = time.monotonic()
    results, errors = run(P.ParrotEngine(parrot=opts), w)
    assert time.monotonic() - t < 15
    assert errors == [] and [r.ok for r in results] == [False]
    assert "no output came back from Parrot for 2 s" in results[0].error and results[0].extra["error_kind"] == "timeout"

    eng = P.ParrotEngine(parrot=P.ParrotOptions(parrot_double.url, models=["no-such-model"], preflight_timeout_s=2.0))
    with pytest.raises(EngineError, match="did not run it within 2 s"):
        asyncio.run(eng.start())


def test_nothing_or_something_else_at_the_url_is_unreachable(tmp_path) -> None:
    from mrw.launch import free_port

    with pytest.raises(EngineUnreachable, match="nothing answers"):
        asyncio.run(P.ParrotEngine(parrot=P.ParrotOptions(f"http://127.0.0.1:{free_port()}")).start())


@pytest.mark.vllm
def test_a_vllm_url_is_not_a_parrot(vllm_server) -> None:
    with pytest.raises(EngineUnreachable, match="not like a Parrot serve core"):
        asyncio.run(P.ParrotEngine(parrot=P.ParrotOptions(vllm_server.root_url)).start())


@pytest.mark.vllm
def test_backend_dying_mid_run_keeps_finished_calls_and_marks_the_rest(vllm_server, tmp_path) -> None:
    proxy = ProxyProcess(vllm_server.root_url, tmp_path / "p.jsonl").start()
    double = ParrotDouble(f"{proxy.url}/v1", vllm_server.model.name, log_path=tmp_path / "d.log").start()
    try:
        calls = [Call("c0", "n", output_tokens=4, prompt=[{"text": "Start."}])]
        calls += [Call(f"c{i}", "n", deps=[f"c{i - 1}"], output_tokens=400, prompt=[{"text": "Go on: "}, {"ref": f"c{i - 1}"}]) for i in range(1, 4)]
        w = Workflow("dies", 0.0, calls)
        eng = P.ParrotEngine(parrot=P.ParrotOptions(double.url, proxy_url=proxy.url, preflight=False, probe_interval_s=0.5))
        results: list[CallResult] = []

        async def sink(r: CallResult) -> None:
            results.append(r)
            if r.call_id == "c0":
                proxy.kill()  # the backend path dies while c1 runs

        async def main():
            await eng.start()
            try:
                await eng.run_workflow(w, {c.id: req(c, w.id) for c in w.calls}, sink)
                return await eng.health()  # what the replayer asks after a transport failure
            finally:
                await eng.close()

        why = asyncio.run(main())
        assert why and "does not answer" in why
        by = {r.call_id: r for r in results}
        assert by["c0"].ok and by["c0"].output_tokens == 4
        for c in ("c1", "c2", "c3"):
            assert not by[c].ok and by[c].extra["error_kind"] == "transport"
            assert "stopped answering" in by[c].error or "dropped session" in by[c].error
        assert double.proc.wait(15) == 1  # Parrot fails fast: the whole process is gone
    finally:
        double.stop()
        proxy.stop()


@pytest.mark.vllm
def test_calls_that_cannot_fit_are_refused_before_parrot_sees_them(parrot_double, backend_proxy) -> None:
    # A backend 400 would end Parrot's engine and core; mrw refuses such calls itself.
    eng = P.ParrotEngine(parrot=P.ParrotOptions(parrot_double.url, proxy_url=backend_proxy.url))
    w = Workflow("big", 0.0, [
        Call("huge", "n", output_tokens=100_000, prompt=[{"text": "Write forever."}]),
        Call("child", "n", deps=["huge"], output_tokens=5, prompt=[{"text": "Edit: "}, {"ref": "huge"}]),
        Call("fine", "n", output_tokens=5, prompt=[{"text": "A short one."}]),
    ])  # fmt: skip
    results, errors = run(eng, w)
    by = {r.call_id: r for r in results}
    assert errors == [] and set(by) == {"huge", "child", "fine"}
    assert eng.max_model_len == 4096  # read from the backend through the proxy
    assert not by["huge"].ok and "exceed the backend's max_model_len 4096" in by["huge"].error
    assert not by["child"].ok and by["child"].error == "not issued: dependency huge failed"
    assert by["fine"].ok and by["fine"].output_tokens == 5
    assert parrot_double.alive()

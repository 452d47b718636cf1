"""Input-length modes and prompts built ahead (mrw.replay.prompts), without a server: real
tokenizers of two vocabularies, real traces, the real engine encoder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from sharing_data import common_prefix, make_trace

from mrw import synth
from mrw.anonymize import load_tokenizer, prompt_token_ids
from mrw.errors import NotSupportedError
from mrw.replay.engines.base import EngineOptions
from mrw.replay.engines.registry import get_engine
from mrw.replay.prompts import PromptError, PromptStore, local_served, make_plan, resolve_mode, sharing_runs
from mrw.replay.scheduler import ReplayOptions, arrival_times, check_feasible
from mrw.trace import Call, Trace, Workflow, new_header


@pytest.fixture(scope="module")
def tiny_tok(tiny):
    return load_tokenizer(tiny.path)


@pytest.fixture(scope="module")
def text_trace(tiny_tok) -> Trace:
    """Counts in the tests' usual tokenizer, which the header names (mrw can find it locally)."""
    t = make_trace(tiny_tok)
    t.header.recorded_against["tokenizer"] = "mrw-tiny-bpe"
    return t


def ids_of(plan, call) -> list[int]:
    return synth.ids_of_runs(plan.token_runs(call), plan.vocab)


def test_recorded_lengths_keep_every_count_and_shared_prefix_under_another_tokenizer(text_trace, tiny_tok, other_tiny):
    served = local_served(other_tiny.path)
    calls = [c for _, c in text_trace.calls()]
    outputs = text_trace.recorded_outputs()
    drift = [served.count(c, outputs) - c.input_tokens for c in calls]
    assert all(d > 20 for d in drift)  # the other vocabulary counts every prompt differently
    plan = make_plan(text_trace, text_trace.workflows, "recorded", served=lambda: served)
    assert plan.info["calls"] == {"text": 0, "token_ids": len(calls)}
    assert "exact token prefixes" in plan.info["sharing"]
    rec = {c.id: prompt_token_ids(c, outputs, tiny_tok) for c in calls}
    got = {c.id: ids_of(plan, c) for c in calls}
    vocab = set(plan.vocab.allowed)
    shared = 0
    for a in calls:
        assert len(got[a.id]) == a.input_tokens == len(rec[a.id])
        assert set(got[a.id]) <= vocab
        for b in calls:
            if a is not b:
                assert common_prefix(got[a.id], got[b.id]) == common_prefix(rec[a.id], rec[b.id]), (a.id, b.id)
                shared += common_prefix(rec[a.id], rec[b.id]) > 100
    assert shared  # the trace does share long prefixes
    again = make_plan(text_trace, text_trace.workflows, "recorded", served=lambda: served)
    assert all(ids_of(again, c) == got[c.id] for c in calls)  # deterministic


def test_recorded_text_is_sent_when_the_served_tokenizer_counts_it(text_trace, tiny):
    plan = make_plan(text_trace, text_trace.workflows, "recorded", served=lambda: local_served(tiny.path))
    assert plan.runs == {} and "sent_as_text" in plan.info
    assert all(plan.token_runs(c) is None for _, c in text_trace.calls())


def test_without_the_trace_tokenizer_shared_lengths_are_estimated_from_characters(text_trace, tiny_tok, other_tiny):
    outputs = text_trace.recorded_outputs()
    calls = [c for _, c in text_trace.calls()]
    sh = sharing_runs(calls, outputs)  # no tokenizer: characters
    assert "estimated" in sh.basis
    vocab = synth.Vocab.from_tokenizer(load_tokenizer(other_tiny.path))
    got = {c.id: synth.ids_of_runs(sh.runs[c.id], vocab) for c in calls}
    rec = {c.id: prompt_token_ids(c, outputs, tiny_tok) for c in calls}
    for a in calls:
        assert len(got[a.id]) == a.input_tokens
        for b in calls:
            r = common_prefix(rec[a.id], rec[b.id])
            if a is not b and r >= 100:
                assert abs(common_prefix(got[a.id], got[b.id]) - r) <= 0.05 * r, (a.id, b.id)


def test_modes_follow_what_the_engine_takes():
    vllm = get_engine("vllm").capabilities
    generic = get_engine("openai")(EngineOptions(url="http://x")).capabilities
    parrot = get_engine("parrot").capabilities
    assert resolve_mode(None, vllm, False) == ("recorded", [])
    for caps in (generic, parrot):
        mode, notes = resolve_mode(None, caps, False)
        assert mode == "natural" and "follows the served tokenizer" in notes[0]
        with pytest.raises(NotSupportedError, match="--input-lengths natural"):
            resolve_mode("recorded", caps, False)
    assert resolve_mode(None, vllm, True)[0] == "natural"  # --live-refs splices text
    with pytest.raises(NotSupportedError, match="--live-refs"):
        resolve_mode("recorded", vllm, True)
    assert resolve_mode("natural", vllm, False) == ("natural", [])
    with pytest.raises(PromptError):
        resolve_mode("exact", vllm, False)


def count_only_trace(n: int = 6) -> Trace:
    wfs = [Workflow(f"a{i}", 0.1 * i, [Call(id=f"a{i}", node="request", input_tokens=40 + 25 * i, output_tokens=3)]) for i in range(n)]
    return Trace(new_header("azure"), wfs)


def test_count_only_calls_replay_with_unique_prompts_of_their_counts(tiny):
    t = count_only_trace()
    caps = get_engine("vllm").capabilities
    assert any("text-free" in n for n in check_feasible(t, t.workflows, caps, ReplayOptions()))
    with pytest.raises(NotSupportedError, match="token_ids"):
        check_feasible(t, t.workflows, get_engine("openai")(EngineOptions(url="http://x")).capabilities, ReplayOptions())
    plan = make_plan(t, t.workflows, "recorded", served=lambda: local_served(tiny.path))
    ids = [ids_of(plan, c) for _, c in t.calls()]
    assert [len(x) for x in ids] == [c.input_tokens for _, c in t.calls()]
    assert all(common_prefix(a, b) < 2 for i, a in enumerate(ids) for b in ids[i + 1:])  # nothing shared


def test_recorded_lengths_refused_without_the_served_tokenizer(text_trace):
    with pytest.raises(PromptError, match="--tokenizer DIR.*--input-lengths natural"):
        make_plan(text_trace, text_trace.workflows, "recorded", served=lambda: None)
    plan = make_plan(text_trace, text_trace.workflows, "natural", served=lambda: None)  # natural needs none
    assert plan.info["calls"]["text"] == text_trace.n_calls


def engine_for_encoding():
    eng = get_engine("vllm")(EngineOptions(url="http://127.0.0.1:1"))
    eng.model = "m"
    return eng


def recorded_store(trace: Trace, served_dir, budget_bytes=None, **opts) -> tuple[PromptStore, object]:
    """(a PromptStore over the real vLLM encoder, its plan) for recorded lengths on `served_dir`'s model."""
    o = ReplayOptions(**opts)
    plan = make_plan(trace, trace.workflows, "recorded", served=lambda: local_served(served_dir))
    return PromptStore(trace, trace.workflows, plan, engine_for_encoding(), o, trace.recorded_outputs(),
                       arrival_times(trace.workflows, o), budget_bytes=budget_bytes), plan


def body_of(store: PromptStore, call: Call, outputs) -> dict:
    req = store.take(call, "w", outputs)
    assert req.messages is None and req.prompt is None  # dropped once encoded
    return orjson.loads(req.body)


def test_bodies_built_ahead_are_the_engine_encoding_of_the_planned_prompt(text_trace, other_tiny):
    store, plan = recorded_store(text_trace, other_tiny.path)
    store.prebuild()
    assert store.built_ahead == text_trace.n_calls and store.all_ahead
    for _, c in text_trace.calls():
        b = body_of(store, c, {})
        assert b["prompt"] == ids_of(plan, c)
        assert b["max_tokens"] == b["min_tokens"] == c.output_tokens and b["ignore_eos"] is True
    assert store.bytes == 0 and store.built_at_issue == 0


def test_live_refs_leave_holes_that_the_live_output_fills(text_trace):
    eng = engine_for_encoding()
    opts = ReplayOptions(live_refs=True)
    plan = make_plan(text_trace, text_trace.workflows, "natural", served=lambda: None)
    store = PromptStore(text_trace, text_trace.workflows, plan, eng, opts, text_trace.recorded_outputs(),
                        arrival_times(text_trace.workflows, opts))
    store.prebuild()
    c = next(c for _, c in text_trace.calls() if c.refs())
    live = {r: f'LIVE "{r}"\n\u00e9\u4e2d\\ end' for r in c.refs()}  # quotes, newline, non-ASCII, backslash
    b = body_of(store, c, live)
    assert b["messages"] == c.render_messages(live)


def test_the_window_builds_the_rest_within_its_budget(text_trace, other_tiny):
    one = 7 * max(c.input_tokens for _, c in text_trace.calls()) + 512
    store, plan = recorded_store(text_trace, other_tiny.path, budget_bytes=2 * one)
    store.prebuild()
    assert 0 < store.built_ahead < text_trace.n_calls and store.pending and not store.all_ahead

    async def consume() -> list[dict]:
        t0 = asyncio.get_running_loop().time()
        window = asyncio.ensure_future(store.fill(lambda: asyncio.get_running_loop().time() - t0))
        got = []
        for c, wf in list(store.order):
            while c.id not in store.ready and not window.done():
                await asyncio.sleep(0.001)
            assert store.bytes <= 2 * one
            got.append((c, body_of(store, c, {})))
        await asyncio.wait_for(window, 10)
        return got

    got = asyncio.run(consume())
    assert store.built_at_issue == 0 and store.built_ahead == text_trace.n_calls
    assert all(b["prompt"] == ids_of(plan, c) for c, b in got)


def test_a_call_the_window_did_not_reach_is_built_when_due(text_trace, other_tiny):
    store, plan = recorded_store(text_trace, other_tiny.path, budget_bytes=1)
    store.prebuild()
    c, _ = store.order[-1]
    assert body_of(store, c, {})["prompt"] == ids_of(plan, c)
    assert store.built_at_issue == 1


def test_the_window_waits_out_a_near_deadline_before_its_next_slice(text_trace, other_tiny):
    import time

    store, _ = recorded_store(text_trace, other_tiny.path, budget_bytes=1)
    store.prebuild()
    events: list[str] = []

    class Timer:  # DeadlineTimer's interface: a deadline 0.5 ms away at every check, until waited out
        def __init__(self):
            self.near = True

        def next_deadline(self):
            return time.perf_counter() + 0.0005 if self.near else None

        def wait_until(self, t):
            events.append("waited")
            self.near = False
            f = asyncio.get_running_loop().create_future()
            f.set_result(None)
            return f

    built = store._build

    def watched(call, wf):
        for x in built(call, wf):
            events.append("slice")
            yield x

    store._build = watched

    async def go():
        await asyncio.wait_for(store.fill(lambda: 0.0, Timer()), 30)

    store.budget = 1 << 30
    asyncio.run(go())
    assert events.index("waited") == 1  # after the first slice, before any other
    assert store.built_ahead == text_trace.n_calls

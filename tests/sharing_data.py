"""Real data for the sharing tests: an mrw trace with text whose token counts come from a
real tokenizer (the tiny local model's byte-level BPE, tests/conftest.py's `tiny`).

The trace has the shapes the study's workloads have: a sequential-summarisation chain, a
copilot fork-join sharing a long system prompt, and an N-shaped DAG that no level-
synchronous schedule expresses exactly.
"""

from __future__ import annotations

import random
from pathlib import Path

from mrw.trace import Call, Message, Trace, Workflow, new_header

WORDS = (
    "the model serves requests in batches while the cache keeps blocks of keys and values for every prompt "
    "energy per token falls as batch size grows until memory bandwidth limits decode throughput "
    "a workflow chains calls where each output feeds the next prompt and agents share a system prompt "
    "summarise the following section of the report and keep the numbers exact "
    "search results list documents with titles snippets and links for the copilot to cite "
    "the coder writes a function the reviewer reads it and the tester runs the unit tests"
).split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def make_trace(tokenizer) -> Trace:
    """A text trace with refs, timings and input_tokens counted by `tokenizer`."""
    from mrw.anonymize import prompt_token_ids

    rng = random.Random(42)
    system = "You are a careful assistant. " + _text(rng, 120)  # the long shared prompt
    wfs: list[Workflow] = []
    outputs: dict[str, str] = {}

    def call(cid, node, deps, msgs, t0, wait=0.0):
        out = _text(rng, rng.randint(12, 30))
        outputs[cid] = out
        c = Call(id=cid, node=node, deps=deps, wait_s=wait, messages=msgs, output=out,
                 sampling={"temperature": 0.0, "stop": ["\n\n"]})
        c.output_tokens = len(tokenizer.encode(out, add_special_tokens=False))
        c.t_issue = round(t0, 4)
        c.t_first_token = round(t0 + 0.05, 4)
        c.t_end = round(t0 + 0.05 + 0.01 * c.output_tokens, 4)
        return c

    # 1. sequential summarisation: a chain with the running summary spliced in
    calls, t = [], 0.0
    for i in range(4):
        msgs = [Message("system", [{"text": system}])]
        if i == 0:
            msgs.append(Message("user", [{"text": "Summarise: " + _text(rng, 60)}]))
            c = call(f"sum.{i}", "summarize", [], msgs, t)
        else:
            msgs.append(Message("user", [{"text": "Summary so far: "}, {"ref": f"sum.{i-1}"},
                                         {"text": " Next section: " + _text(rng, 60)}]))
            c = call(f"sum.{i}", "summarize", [f"sum.{i-1}"], msgs, t + 0.02, wait=0.02)
        calls.append(c)
        t = c.t_end
    wfs.append(Workflow("summary", 0.0, calls, tags={"kind": "summarization"}))

    # 2. copilot: three searches sharing the system prompt, then an answer citing all three
    a = 0.5
    calls = [call(f"cop.q{i}", "search", [], [Message("system", [{"text": system}]),
                                              Message("user", [{"text": f"Query {i}: " + _text(rng, 20)}])], a + 0.01 * i)
             for i in range(3)]
    end = max(c.t_end for c in calls)
    calls.append(call("cop.answer", "answer", [c.id for c in calls],
                      [Message("system", [{"text": system}]),
                       Message("user", [{"text": "Results: "}, {"ref": "cop.q0"}, {"text": " | "}, {"ref": "cop.q1"},
                                        {"text": " | "}, {"ref": "cop.q2"}, {"text": " Answer the question."}])],
                      end + 0.1, wait=0.1))
    wfs.append(Workflow("copilot", a, calls, tags={"kind": "copilot", "doc": "/home/alice/secret.pdf"}))

    # 3. N-shape: d depends on b only, c on a and b
    a = 1.0
    ca = call("n.a", "plan", [], [Message("user", [{"text": "Plan: " + _text(rng, 30)}])], a)
    cb = call("n.b", "code", [], [Message("user", [{"text": "Code: " + _text(rng, 30)}])], a)
    cc = call("n.c", "review", ["n.a", "n.b"], [Message("user", [{"ref": "n.a"}, {"text": " and "}, {"ref": "n.b"}])],
              max(ca.t_end, cb.t_end))
    cd = call("n.d", "test", ["n.b"], [Message("user", [{"text": "Test this: "}, {"ref": "n.b"}])], cb.t_end)
    wfs.append(Workflow("nshape", a, [ca, cb, cc, cd]))

    trace = Trace(new_header("composite", generator={"name": "test", "seed": 1,
                                                     "params": {"n": 3, "corpus": "/data/private/docs", "rate": 0.5}},
                             recorded_against={"engine": "vllm", "model": "/tmp/models/tiny-bpe", "host": "gpu-node-7",
                                               "url": "http://10.0.0.7:8000"},
                             description="recorded by alice on the lab cluster"),
                  wfs)
    for _, c in trace.calls():
        c.input_tokens = len(prompt_token_ids(c, outputs, tokenizer))
    return trace


# ---------------------------------------------------------------------------- fixtures
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tok_dir(tiny) -> Path:
    return tiny.path


@pytest.fixture(scope="session")
def tokenizer(tok_dir):
    from mrw.anonymize import load_tokenizer

    return load_tokenizer(tok_dir)


@pytest.fixture()
def text_trace(tokenizer) -> Trace:
    return make_trace(tokenizer)


@pytest.fixture()
def trace_file(tmp_path, text_trace) -> Path:
    from mrw.trace import dump

    return dump(text_trace, tmp_path / "composite.json")


def common_prefix(a, b) -> int:
    """How many leading items two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n

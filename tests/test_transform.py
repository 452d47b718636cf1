"""mrw.transform: output/input length scaling of a trace, deterministic, refs and sharing kept."""

from __future__ import annotations

import copy

import pytest
from sweep_fixtures import SYSTEM, build_trace

from mrw import transform as tf
from mrw import validate as v
from mrw.trace import Call, Header, Message, Trace, Workflow, dumps


def _trace():
    return build_trace(None)


def test_resize_text_shortens_at_word_boundary_and_lengthens_with_filler():
    text = "The city council met on Tuesday to discuss the new bicycle lanes on Main Street."
    short = tf.resize_text(text, 0.5)
    assert text.startswith(short)
    assert abs(len(short) - len(text) / 2) <= len(text) / 4
    assert text[len(short)] == " "  # cut before a space: whole words only
    long = tf.resize_text(text, 2.0)
    assert long.startswith(text) and len(long) == round(2 * len(text))
    assert tf.resize_text(text, 2.0) == long  # deterministic
    assert tf.resize_text(text, 1.0) == text
    assert tf.resize_text("", 3.0) == ""
    # filler depends on the text: two different texts get different filler
    assert tf.resize_text("Other text here.", 3.0)[16:] != tf.resize_text("Yet another one.", 3.0)[16:]


def test_scale_outputs_tokens_text_and_sampling():
    t = _trace()
    t.workflows[0].calls[0].sampling = {"max_tokens": 8, "temperature": 0.0}
    s = tf.scale_trace(t, out_scale=0.5)
    for (_, a), (_, b) in zip(t.calls(), s.calls()):
        assert b.output_tokens == max(1, round(a.output_tokens * 0.5))
        assert len(b.output) < len(a.output) and a.output.startswith(b.output)
    assert s.workflows[0].calls[0].sampling == {"max_tokens": 4, "temperature": 0.0}
    # the input trace is untouched
    assert t.workflows[0].calls[0].sampling["max_tokens"] == 8
    s2 = tf.scale_trace(t, out_scale=2)
    assert [c.output_tokens for _, c in s2.calls()] == [2 * c.output_tokens for _, c in t.calls()]


def test_scale_inputs_keeps_refs_dag_waits_and_validates():
    t = _trace()
    for scale in (0.5, 2.0):
        s = tf.scale_trace(t, in_scale=scale, out_scale=1.5)
        assert v.check(s.to_dict()) == []
        for (wa, a), (wb, b) in zip(t.calls(), s.calls()):
            assert (a.id, a.deps, a.wait_s, a.refs(), wa.arrival_s) == (b.id, b.deps, b.wait_s, b.refs(), wb.arrival_s)
            lit_a = sum(len(x["text"]) for x in a.segments() if "text" in x)
            lit_b = sum(len(x["text"]) for x in b.segments() if "text" in x)
            assert lit_b == pytest.approx(scale * lit_a, rel=0.25)
        tr = s.header.extra["transform"]
        assert tr["in_scale"] == scale and tr["out_scale"] == 1.5 and tr["input_tokens"] == "estimated from characters"


def test_scaling_is_deterministic_and_composes_in_header():
    t = _trace()
    a = dumps(tf.scale_trace(t, 2, 0.5, source_sha256="abc"))
    b = dumps(tf.scale_trace(copy.deepcopy(t), 2, 0.5, source_sha256="abc"))
    assert a == b
    twice = tf.scale_trace(tf.scale_trace(t, 2, 1, source_sha256="abc"), 0.5, 3)
    x = twice.header.extra["transform"]
    assert (x["out_scale"], x["in_scale"], x["source_sha256"], len(x["steps"])) == (1.0, 3.0, "abc", 2)


def test_prefix_sharing_is_kept():
    """The shared system prompt stays identical across calls, and a prefix shared inside one
    segment stays a shared prefix after cutting or lengthening."""
    shared = "Context: " + "the report on energy use in large model serving " * 6
    calls = [
        Call(f"w/c{i}", "n", [], 0.0, 100, 10, messages=[Message("system", [{"text": SYSTEM}]),
                                                         Message("user", [{"text": shared + q}])])
        for i, q in enumerate(["Question one about power?", "Another question about batching?"])
    ]
    t = Trace(Header("x", format="mrw-trace", version=1), [Workflow("w", 0.0, calls)])
    for scale in (0.5, 0.8, 1.7):
        s = tf.scale_trace(t, in_scale=scale)
        m0, m1 = (c.messages for _, c in s.calls())
        assert m0[0].content == m1[0].content  # identical segments stay identical
        u0, u1 = m0[1].content[0]["text"], m1[1].content[0]["text"]
        common = len(_common_prefix(u0, u1))
        assert common >= min(len(shared), len(u0), len(u1)) - 1


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_token_only_trace_scales_counts_and_hashes():
    c1 = Call("w/a", "n", [], 0.0, 64, 8, hash_ids=[11, 12, 13, 14])
    c2 = Call("w/b", "n", [], 0.0, 64, 8, hash_ids=[11, 12, 13, 14])
    t = Trace(Header("x", format="mrw-trace", version=1, block_size=16), [Workflow("w", 0.0, [c1, c2])])
    up = tf.scale_trace(t, in_scale=2, out_scale=0.5)
    a, b = (c for _, c in up.calls())
    assert (a.input_tokens, a.output_tokens) == (128, 4)
    assert a.hash_ids[:4] == [11, 12, 13, 14] and len(a.hash_ids) == 8
    assert a.hash_ids == b.hash_ids  # equal prefixes extend equally
    down = tf.scale_trace(t, in_scale=0.5)
    assert next(c for _, c in down.calls()).hash_ids == [11, 12]
    assert v.check(up.to_dict()) == []


def test_counter_recounts_tokens():
    t = _trace()
    counted = tf.scale_trace(t, in_scale=2, count_tokens=lambda c, outs: 7, token_counter_name="fake")
    assert {c.input_tokens for _, c in counted.calls()} == {7}
    assert counted.header.extra["transform"]["input_tokens"] == "counted with fake"


def test_estimated_input_tokens_move_with_the_text():
    t = _trace()
    s = tf.scale_trace(t, in_scale=2)
    for (_, a), (_, b) in zip(t.calls(), s.calls()):
        assert b.input_tokens > a.input_tokens
    s = tf.scale_trace(t, in_scale=0.5)
    for (_, a), (_, b) in zip(t.calls(), s.calls()):
        assert 0 < b.input_tokens < a.input_tokens


def test_bad_scales_are_refused():
    with pytest.raises(ValueError, match="out-scale must be > 0"):
        tf.scale_trace(_trace(), out_scale=0)
    with pytest.raises(ValueError, match="in-scale must be > 0"):
        tf.scale_trace(_trace(), in_scale=-1)

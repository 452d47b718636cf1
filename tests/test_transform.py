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


# ---------------------------------------------------------------------------- copies


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_copies_are_separate_workflows_that_share_only_what_the_workload_shares():
    """On the recorded copilot trace: k copies keep the DAG and waits, rename ids, deps and
    refs, arrive staggered, validate, and a prefix cache sees them share the system prompt
    (the workload's shared part) but not each other's queries and documents."""
    from mrw.prefix import block_hashes, hit_blocks
    from mrw.trace import load

    t = load(REPO / "traces" / "copilot.json.gz")
    r = tf.replicate(t, 3, stagger_s=0.5, source_sha256="abc")
    assert v.check(r.to_dict()) == []
    assert len(r.workflows) == 3 * len(t.workflows) and r.n_calls == 3 * t.n_calls
    assert [w.id for w in r.workflows[: len(t.workflows)]] == [w.id for w in t.workflows]  # copy 0 is the original
    for k in (1, 2):
        for w0, w in zip(t.workflows, r.workflows[k * len(t.workflows):]):
            assert w.id == f"{w0.id}~{k}" and w.arrival_s == pytest.approx(w0.arrival_s + 0.5 * k)
            for c0, c in zip(w0.calls, w.calls):
                assert c.id == f"{c0.id}~{k}" and c.deps == [f"{d}~{k}" for d in c0.deps]
                assert c.refs() == [f"{x}~{k}" for x in c0.refs()]
                assert (c.node, c.wait_s, c.output_tokens) == (c0.node, c0.wait_s, c0.output_tokens)
                assert c.t_issue == pytest.approx(c0.t_issue + 0.5 * k)
                assert c0.input_tokens < c.input_tokens <= c0.input_tokens + 40  # the tags' few tokens
                assert c.messages[0].content == c0.messages[0].content  # the shared system prompt
    tr = r.header.extra["transform"]
    assert (tr["copies"], tr["source_sha256"]) == (3, "abc")

    def share(trace):
        outs = trace.recorded_outputs()
        hit, total = hit_blocks(block_hashes(list(c.render_prompt(outs).encode()), 64) for _, c in trace.calls())
        return hit / total

    # Copies of copilot hit on the system prompt as new sessions would: more sharing than the
    # source, but far from the ~100% that verbatim copies give.
    naive = copy.deepcopy(t)
    for k in (1, 2):
        for w0 in t.workflows:
            w = copy.deepcopy(w0)
            w.id = f"{w0.id}#{k}"
            for c in w.calls:
                c.id, c.deps = f"{c.id}#{k}", [f"{d}#{k}" for d in c.deps]
                for m in c.messages:
                    m.content = [{"ref": f'{s["ref"]}#{k}'} if "ref" in s else s for s in m.content]
            naive.workflows.append(w)
    naive_outs = {f"{cid}#{k}": o for cid, o in t.recorded_outputs().items() for k in (1, 2)}
    naive_outs.update(t.recorded_outputs())
    assert share(t) < share(r) < share(naive) - 0.05


def test_copies_of_a_token_only_trace_keep_shared_hashes_and_fork_the_rest():
    a = Call("w0/a", "n", [], 0.0, 64, 8, hash_ids=[1, 2, 3, 4])
    b = Call("w1/a", "n", [], 0.0, 64, 8, hash_ids=[1, 2, 5, 6])
    t = Trace(Header("x", format="mrw-trace", version=1, block_size=16),
              [Workflow("w0", 0.0, [a]), Workflow("w1", 1.0, [b])])
    r = tf.replicate(t, 2)
    assert v.check(r.to_dict()) == []
    c = r.workflows[2].calls[0]
    assert c.id == "w0/a~1" and c.hash_ids[:2] == [1, 2] and set(c.hash_ids[2:]).isdisjoint({3, 4, 5, 6})
    assert r.workflows[3].calls[0].hash_ids[2:] != c.hash_ids[2:]
    assert dumps(tf.replicate(t, 2)) == dumps(r)  # deterministic
    with pytest.raises(ValueError, match="copies must be >= 1"):
        tf.replicate(t, 0)


def test_mrw_transform_command_writes_a_valid_replicated_scaled_trace(tmp_path):
    from click.testing import CliRunner

    from mrw.cli import cli
    from mrw.trace import load

    out = tmp_path / "s.json.gz"
    res = CliRunner().invoke(cli, ["transform", str(REPO / "traces" / "summarization.json.gz"), "-o", str(out),
                                   "--copies", "4", "--stagger", "0.25", "--out-scale", "2"])
    assert res.exit_code == 0, res.output
    src, t = load(REPO / "traces" / "summarization.json.gz"), load(out)
    assert len(t.workflows) == 4 * len(src.workflows)
    assert sum(c.output_tokens for _, c in t.calls()) == 4 * 2 * sum(c.output_tokens for _, c in src.calls())
    x = t.header.extra["transform"]
    assert x["out_scale"] == 2.0 and x["copies"] == 4 and len(x["source_sha256"]) == 64
    res = CliRunner().invoke(cli, ["transform", str(out), "-o", str(out)])
    assert res.exit_code != 0 and "new file" in res.output

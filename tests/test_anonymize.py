"""Anonymisation keeps what performance depends on and nothing else."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from sharing_data import text_trace, tok_dir, tokenizer, trace_file  # noqa: F401

from mrw.anonymize import AnonymizeError, anonymize, prompt_token_ids
from mrw.cli import cli
from mrw.info import shared_prefix, trace_info
from mrw.prefix import block_hashes, hit_blocks
from mrw.trace import load


def token_level_share(trace, tokenizer, bs):
    outs = trace.recorded_outputs()
    calls = sorted((c for _, c in trace.calls()), key=lambda c: c.t_issue)
    hits, total = hit_blocks(block_hashes(prompt_token_ids(c, outs, tokenizer), bs) for c in calls)
    return hits / total


@pytest.mark.parametrize("bs", [4, 16])
def test_keeps_dag_counts_timings_and_prefix_sharing(text_trace, tokenizer, bs):
    anon, rep = anonymize(text_trace, tokenizer, block_size=bs)
    assert rep.token_count_mismatches == 0  # the trace's counts came from this tokenizer
    assert anon.header.block_size == bs
    for wo, wa in zip(text_trace.workflows, anon.workflows, strict=True):
        assert wa.arrival_s == wo.arrival_s
        ren = {co.id: ca.id for co, ca in zip(wo.calls, wa.calls, strict=True)}
        for co, ca in zip(wo.calls, wa.calls):
            assert ca.deps == [ren[d] for d in co.deps]
            assert (ca.input_tokens, ca.output_tokens, ca.wait_s, ca.node) == (co.input_tokens, co.output_tokens, co.wait_s, co.node)
            assert (ca.t_issue, ca.t_first_token, ca.t_end) == (co.t_issue, co.t_first_token, co.t_end)
            assert not ca.has_text and ca.output is None
            assert len(ca.hash_ids) == -(-co.input_tokens // bs)
    share, basis = shared_prefix(anon)
    assert basis == "hash_ids"
    assert share == pytest.approx(token_level_share(text_trace, tokenizer, bs))
    assert share > 0.3  # the shared system prompt and the chain's repeated prefix
    i_o, i_a = trace_info(text_trace)[0], trace_info(anon)[0]
    for k in ("workflows", "calls", "depth_max", "width_max", "input_tokens", "output_tokens", "critical_path_s_mean"):
        assert getattr(i_a, k) == getattr(i_o, k), k


def test_no_text_or_identifying_detail_survives(tmp_path, trace_file, tok_dir, text_trace):
    out = tmp_path / "anon.json"
    r = CliRunner().invoke(cli, ["anonymize", str(trace_file), "-o", str(out), "--tokenizer", str(tok_dir)])
    assert r.exit_code == 0, r.output
    raw = out.read_bytes()
    for secret in [b"alice", b"/home", b"/data/private", b"gpu-node-7", b"10.0.0.7", b"careful assistant",
                   b"Summary so far", b"\\n\\n", b"/tmp/models"]:
        assert secret not in raw, secret
    for _, c in text_trace.calls():  # no output text, not even a word run
        assert c.output[:40].encode() not in raw
    anon = load(out)
    assert anon.header.recorded_against == {"engine": "vllm", "model": "tiny-bpe"}
    assert anon.header.generator["params"] == {"n": 3, "rate": 0.5}
    removed = anon.header.extra["anonymized"]["removed"]
    assert "recorded_against.host" in removed and "generator.params.corpus" in removed and "description" in removed
    assert anon.workflows[1].tags == {"kind": "copilot"}


def test_salt_is_random_per_run(text_trace, tokenizer):
    a, _ = anonymize(text_trace, tokenizer)
    b, _ = anonymize(text_trace, tokenizer)
    ha = [c.hash_ids for _, c in a.calls()]
    hb = [c.hash_ids for _, c in b.calls()]
    assert ha != hb
    assert orjson.dumps(a.to_dict()).count(b"salt") == 1  # only the note that it is not kept


def test_refuses_without_tokenizer(tmp_path, trace_file):
    r = CliRunner().invoke(cli, ["anonymize", str(trace_file), "-o", str(tmp_path / "x.json")], standalone_mode=False)
    assert isinstance(r.exception, AnonymizeError)
    assert "--tokenizer" in str(r.exception) and "tiny-bpe" in str(r.exception)
    assert not (tmp_path / "x.json").exists()


def test_refuses_already_anonymised(text_trace, tokenizer):
    anon, _ = anonymize(text_trace, tokenizer)
    with pytest.raises(AnonymizeError, match="already anonymised"):
        anonymize(anon, tokenizer)

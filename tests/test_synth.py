"""Synthetic prompts from hash_ids: exact lengths, shared blocks stay shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sharing_data import common_prefix, text_trace, tok_dir, tokenizer  # noqa: F401

from mrw import synth
from mrw.anonymize import anonymize
from mrw.trace import Call


@pytest.fixture()
def anon(text_trace, tokenizer):
    return anonymize(text_trace, tokenizer, block_size=8)[0]


def test_token_ids_exact_in_vocab_deterministic_and_sharing(anon, tokenizer):
    vocab = synth.Vocab.from_tokenizer(tokenizer)
    calls = [c for _, c in anon.calls()]
    prompts = {c.id: synth.prompt_for(c, 8, tokenizer) for c in calls}
    for c in calls:
        p = prompts[c.id]
        assert len(p) == c.input_tokens
        assert all(0 <= t < vocab.size and t not in vocab.special_ids for t in p)
        assert synth.prompt_for(c, 8, vocab) == p  # same from a Vocab as from the tokenizer
    shared_any = False
    for a in calls:
        for b in calls:
            if a is b:
                continue
            k = common_prefix(a.hash_ids, b.hash_ids)
            cp = common_prefix(prompts[a.id], prompts[b.id])
            full = min(k * 8, a.input_tokens, b.input_tokens)
            assert cp >= full  # every shared block is shared
            if k < min(len(a.hash_ids), len(b.hash_ids)):
                assert cp < (k + 1) * 8  # and an unshared block is not (8 random ids never collide here)
            shared_any |= k > 0
    assert shared_any


def test_calls_without_hash_ids_share_nothing():
    a = Call(id="a", node="x", input_tokens=100, output_tokens=1)
    b = Call(id="b", node="x", input_tokens=100, output_tokens=1)
    pa, pb = synth.prompt_for(a, 16, 1000), synth.prompt_for(b, 16, 1000)
    assert len(pa) == len(pb) == 100 and common_prefix(pa, pb) < 3
    assert synth.prompt_for(a, 16, 1000) == pa


def test_hash_ids_shorter_than_input_are_padded_uniquely():
    a = Call(id="a", node="x", input_tokens=40, output_tokens=1, hash_ids=[7])
    b = Call(id="b", node="x", input_tokens=40, output_tokens=1, hash_ids=[7])
    pa, pb = synth.prompt_for(a, 16, 1000), synth.prompt_for(b, 16, 1000)
    assert len(pa) == 40 and pa[:16] == pb[:16] and pa[16:] != pb[16:]


def check_text(calls, tok, bs):
    texts = {c.id: synth.prompt_for(c, bs, tok, as_text=True) for c in calls}
    for c in calls:
        assert len(tok.encode(texts[c.id], add_special_tokens=False)) == c.input_tokens
    for a in calls:
        for b in calls:
            k = common_prefix(a.hash_ids, b.hash_ids)
            if a is b or k == 0:
                continue
            ta = tok.encode(texts[a.id], add_special_tokens=False)
            tb = tok.encode(texts[b.id], add_special_tokens=False)
            assert common_prefix(ta, tb) >= min(k * bs, a.input_tokens, b.input_tokens)


def test_text_exact_token_count_and_shared_prefix(anon, tokenizer):
    check_text([c for _, c in anon.calls()], tokenizer, 8)


def test_text_overhead_is_subtracted(anon, tokenizer):
    c = next(c for _, c in anon.calls())
    t = synth.prompt_for(c, 8, tokenizer, as_text=True, overhead_tokens=1)
    assert len(tokenizer.encode(t, add_special_tokens=False)) == c.input_tokens - 1


SMOL = Path(os.environ.get("MRW_TEST_TOKENIZER", "/tmp/smol-hf"))


@pytest.mark.skipif(not (SMOL / "tokenizer.json").exists(), reason="no real model tokenizer on this machine")
def test_text_exact_with_a_real_model_tokenizer(anon):
    from mrw.anonymize import load_tokenizer

    tok = load_tokenizer(SMOL)
    check_text([c for _, c in anon.calls()], tok, 8)
    ids = synth.prompt_for(next(c for _, c in anon.calls()), 8, tok)
    assert not set(ids) & set(tok.all_special_ids)


def test_replay_seam_uses_header_block_size(anon, tokenizer):
    c = next(c for _, c in anon.calls())
    assert synth.prompt_token_ids(c, anon.header, tokenizer) == synth.prompt_for(c, 8, tokenizer)
    ids = synth.prompt_token_ids(c, anon.header)
    assert len(ids) == c.input_tokens and all(16 <= i < 1024 for i in ids)

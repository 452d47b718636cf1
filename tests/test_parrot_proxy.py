"""The mrw backend proxy (what makes Parrot's output lengths exact) against the real vLLM."""

from __future__ import annotations

import httpx
import orjson
import pytest
from parrot_double import ProxyProcess

from mrw.backend_proxy import digest, force_length, prompt_text

pytestmark = pytest.mark.vllm


def chat(url: str, model: str, n: int, **kw) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": n, "temperature": 0.0, **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_forced_lengths_are_exact_where_the_backend_alone_stops_early(backend_proxy, vllm_server) -> None:
    from transformers import AutoTokenizer

    model = vllm_server.model.name
    eos = AutoTokenizer.from_pretrained(str(vllm_server.model.path)).eos_token_id
    push_eos = {"logit_bias": {str(eos): 100}}  # makes the model want to stop at once
    for n in (1, 7, 33, 120):
        direct = chat(vllm_server.root_url, model, n, **push_eos).json()
        assert direct["usage"]["completion_tokens"] < n or n == 1, "the backend alone stops at EOS"
        r = chat(backend_proxy.url, model, n, **push_eos)
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == n
        assert body["choices"][0]["finish_reason"] == "length"


def test_records_usage_timings_and_digests(backend_proxy, vllm_server) -> None:
    before = backend_proxy.count()
    r = chat(backend_proxy.url, vllm_server.model.name, 9)
    rec = backend_proxy.records(before)[-1]
    assert rec["forced"] and rec["status"] == 200 and rec["completion_tokens"] == 9 and rec["prompt_tokens"] > 0
    assert rec["t_recv"] <= rec["t_first_token"] <= rec["t_end"]
    assert rec["prompt_sha256"] == digest("Say something short.")
    assert rec["output_sha256"] == digest(r.json()["choices"][0]["message"]["content"])
    assert rec["request"]["max_tokens"] == 9  # as received: the injection is the proxy's


def test_streaming_passes_through_and_completions_work(backend_proxy, vllm_server) -> None:
    body = {"model": vllm_server.model.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{backend_proxy.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    usage = [orjson.loads(ln[5:])["usage"] for ln in lines[:-1] if orjson.loads(ln[5:]).get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 5
    r = httpx.post(f"{backend_proxy.url}/v1/completions", json={"model": vllm_server.model.name, "prompt": "Once", "max_tokens": 6}, timeout=60)
    assert r.json()["object"] == "text_completion" and r.json()["usage"]["completion_tokens"] == 6


def test_backend_errors_are_relayed_and_recorded(backend_proxy, vllm_server, tmp_path) -> None:
    before = backend_proxy.count()
    r = chat(backend_proxy.url, vllm_server.model.name, 10**6)  # beyond the context length
    assert r.status_code == 400
    rec = backend_proxy.records(before)[-1]
    assert rec["status"] == 400 and rec["error"]
    from mrw.launch import free_port

    dead = ProxyProcess(f"http://127.0.0.1:{free_port()}", tmp_path / "dead.jsonl").start()
    try:
        r = chat(dead.url, "m", 3)
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
        assert dead.records()[0]["status"] == 502
    finally:
        dead.stop()
    lines = (tmp_path / "dead.jsonl").read_bytes().splitlines()
    assert len(lines) == 1 and orjson.loads(lines[0])["status"] == 502  # the JSONL mirror


def test_pure_helpers() -> None:
    body = {"max_tokens": 12}
    assert force_length(body) and body == {"max_tokens": 12, "ignore_eos": True, "min_tokens": 12}
    assert not force_length({"messages": []})  # no cap: ignoring EOS would run to the context limit
    assert prompt_text("/v1/chat/completions", {"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]}]}) == "ab"
    assert prompt_text("/v1/completions", {"prompt": "p"}) == "p"

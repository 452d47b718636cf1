"""Token counting and chunking for the generators, and what the recorded-against engine is.

Chunk sizes are in the served model's tokens. The tokenizer, in order of preference:
1. a local Hugging Face tokenizer (`--tokenizer DIR`, or the embedded default model's folder):
   exact, offsets from the fast tokenizer;
2. the engine's own `/tokenize` endpoint (vLLM): exact counts, used to calibrate the
   characters-per-token ratio of each text, which then cuts on whitespace;
3. 4 characters per token (a documented approximation for English prose).
The trace header says which one was used (`extra.recording.chunking`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

CHARS_PER_TOKEN = 4.0


@dataclass
class Tokenizer:
    name: str  # recorded in the header
    method: str  # "local", "engine" or "approx"
    _offsets: Callable[[str], list[int]] | None = None  # char start of each token
    _count: Callable[[str], int] | None = None

    def count(self, text: str) -> int:
        if self._count is not None:
            return self._count(text)
        return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0

    def chunks(self, text: str, n_tokens: int) -> list[str]:
        """Consecutive pieces of about `n_tokens` tokens each, covering the whole text."""
        if n_tokens < 1:
            raise ValueError("chunk size must be at least one token")
        if self._offsets is not None:
            starts = self._offsets(text)
            cuts = [starts[i] for i in range(n_tokens, len(starts), n_tokens)]
            bounds = [0, *cuts, len(text)]
            return [text[a:b] for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]
        total = self.count(text)
        cpt = len(text) / max(total, 1)
        out, pos = [], 0
        step = max(1, int(n_tokens * cpt))
        while pos < len(text):
            end = min(len(text), pos + step)
            if end < len(text):  # cut on whitespace, never mid-word
                ws = text.rfind(" ", pos + step // 2, end)
                end = ws + 1 if ws != -1 else end
            if text[pos:end].strip():
                out.append(text[pos:end])
            pos = end
        return out


def local_tokenizer(path: str | Path, name: str | None = None) -> Tokenizer:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.model_max_length = 1 << 30  # we count and cut long documents; no model sees them whole

    def offsets(text: str) -> list[int]:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [a for a, _ in enc["offset_mapping"]]

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return Tokenizer(name or getattr(tok, "name_or_path", str(path)), "local", offsets, count)


def engine_tokenizer(root_url: str, model: str, headers: dict | None = None) -> Tokenizer | None:
    """The engine's /tokenize endpoint (vLLM), or None when it has none."""
    client = httpx.Client(timeout=30, headers=headers or {})

    def count(text: str) -> int:
        r = client.post(f"{root_url}/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False})
        r.raise_for_status()
        return int(r.json()["count"])

    try:
        count("probe")
    except Exception:
        return None
    return Tokenizer(model, "engine", None, count)


def approx_tokenizer() -> Tokenizer:
    return Tokenizer(f"approx-{CHARS_PER_TOKEN:g}-chars-per-token", "approx")


@dataclass
class EngineInfo:
    engine: str
    engine_version: str | None
    model: str


def probe_engine(base_url: str, api_key: str | None, model: str | None) -> EngineInfo:
    """Which engine answers at `base_url` (…/v1): vLLM answers /version; the model is the one
    asked for, or the only/first one /v1/models lists."""
    from mrw.errors import EngineError, EngineUnreachable

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    root = root_url(base_url)
    try:
        with httpx.Client(timeout=10, headers=headers) as c:
            version = None
            engine = "openai-compatible"
            try:
                r = c.get(f"{root}/version")
                if r.status_code == 200 and "version" in r.json():
                    version, engine = str(r.json()["version"]), "vllm"
            except (httpx.HTTPError, ValueError):
                pass
            r = c.get(f"{base_url}/models")
    except httpx.HTTPError as e:
        raise EngineUnreachable(f"nothing answers at {redact(base_url)} ({type(e).__name__}); start the server or fix --base-url") from None
    if r.status_code in (401, 403):
        raise EngineError(f"{redact(base_url)} refused the API key (HTTP {r.status_code}); pass --api-key or set OPENAI_API_KEY")
    served = []
    if r.status_code == 200:
        served = [m.get("id") for m in (r.json().get("data") or [])]
    if model is None:
        if not served:
            raise EngineError(f"{redact(base_url)} lists no model; pass --model")
        model = served[0]
    elif served and model not in served:
        raise EngineError(f"model {model!r} is not served at {redact(base_url)} (it serves {', '.join(served)}); fix --model")
    return EngineInfo(engine, version, model)


def root_url(base_url: str) -> str:
    b = base_url.rstrip("/")
    return b[: -len("/v1")] if b.endswith("/v1") else b


def redact(url: str) -> str:
    """A URL without credentials, path or query: safe for messages (never for the header)."""
    u = httpx.URL(url)
    return f"{u.scheme}://{u.host}{':' + str(u.port) if u.port else ''}"

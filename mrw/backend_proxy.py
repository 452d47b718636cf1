"""An OpenAI-compatible proxy that forces exact output lengths and records every request.

Why it exists: Parrot's OpenAI-type engine forwards only temperature, top_p, max_tokens,
stop and the two penalties to its backend, so `ignore_tokenizer_eos` is lost and outputs stop
early at EOS. vLLM's `--override-generation-config` cannot help either: it only sets
temperature/top_k/top_p/min_p/penalties/max_new_tokens, never `ignore_eos` or a per-request
`min_tokens`. So mrw puts this proxy between Parrot's engine and vLLM:

    Parrot engine --(chat, max_tokens=N)--> proxy --(+ ignore_eos, min_tokens=N, stream)--> vLLM

It also records what Parrot itself never returns: per-request prompt/completion token counts
(`stream_options.include_usage`) and backend timings (arrival, first token, end) on
`time.monotonic()`, which on Linux is CLOCK_MONOTONIC and so comparable across processes of
one host. Records are served at `GET /mrw/requests?after=SEQ` and appended to a JSONL file.
Prompts and outputs are kept only as SHA-256 digests (traces may be anonymised).

Run: python -m mrw.backend_proxy --backend http://127.0.0.1:8200 --port 9002 --log FILE
Needs starlette and uvicorn (both come with vLLM and with Parrot).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

FORWARDED_HEADERS = ("authorization",)


def digest(text: str) -> str:
    """The digest by which a proxy record is matched to a replayed call."""
    return hashlib.sha256(text.encode()).hexdigest()


def prompt_text(path: str, body: dict) -> str:
    """The prompt as one string: chat message contents concatenated in order (roles dropped,
    since engines such as Parrot merge them anyway), or the completions prompt."""
    if path.endswith("chat/completions"):
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content")
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):  # content parts
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return "".join(parts)
    p = body.get("prompt")
    return p if isinstance(p, str) else orjson.dumps(p).decode()


@dataclass(slots=True)
class ProxyRecord:
    """One request that went through the proxy. Times: time.monotonic() of this host."""

    seq: int
    path: str
    model: str | None
    prompt_sha256: str
    prompt_chars: int
    max_tokens: int | None
    forced: bool  # ignore_eos + min_tokens = max_tokens were injected
    t_recv: float
    wall_recv: float
    t_first_token: float | None = None
    t_end: float | None = None
    status: int | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    output_sha256: str | None = None
    output_chars: int | None = None
    chunks: int = 0
    error: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] | None = None  # the body as received, with --keep-text only
    output: str | None = None  # with --keep-text only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Ledger:
    """Records in arrival order (`seq`), and a second list in the order they finished, which
    is what `/mrw/requests?after=N` pages through: a request that finishes late is never
    skipped by a reader whose cursor already passed a later-started one."""

    def __init__(self, log_path: Path | None):
        self.records: list[ProxyRecord] = []
        self.finished: list[ProxyRecord] = []
        self._file = open(log_path, "ab") if log_path else None

    def new(self, **kw: Any) -> ProxyRecord:
        rec = ProxyRecord(seq=len(self.records) + 1, **kw)
        self.records.append(rec)
        return rec

    def done(self, rec: ProxyRecord) -> None:
        self.finished.append(rec)
        if self._file:
            self._file.write(orjson.dumps(rec.to_dict()) + b"\n")
            self._file.flush()

    def after(self, n: int) -> list[dict]:
        """Finished records, from the n-th to finish on."""
        return [r.to_dict() for r in self.finished[n:]]


SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "presence_penalty", "frequency_penalty", "seed")


def force_length(body: dict) -> bool:
    """Make the backend generate exactly max_tokens tokens (vLLM's ignore_eos + min_tokens)."""
    n = body.get("max_tokens")
    if n is None:
        n = body.get("max_completion_tokens")
    if n is None:
        return False  # ignoring EOS without a cap would run to the context limit
    body["ignore_eos"] = True
    body["min_tokens"] = int(n)
    return True


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": None}}


def build_app(backend: str, ledger: Ledger, *, force: bool = True, keep_text: bool = False, timeout_s: float = 3600.0):
    """The starlette app. `backend` is the base URL without /v1."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(
        base_url=backend.rstrip("/"),
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )

    async def health(_: Request) -> Response:
        return JSONResponse({
            "ok": True, "backend": backend, "force_length": force, "requests": len(ledger.records),
            "monotonic": time.monotonic(), "wall": time.time(),  # lets a client map record times onto its clock
        })  # fmt: skip

    async def requests_after(request: Request) -> Response:
        after = int(request.query_params.get("after", "0"))
        return Response(orjson.dumps(ledger.after(after)), media_type="application/json")

    async def models(request: Request) -> Response:
        try:
            r = await client.get("/v1/models", headers=_fwd(request))
        except httpx.HTTPError as e:
            return JSONResponse(error_body(f"backend {backend} unreachable: {e!r}", "backend_unreachable"), 502)
        return Response(r.content, r.status_code, media_type="application/json")

    async def generate(request: Request) -> Response:
        path = request.url.path
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse(error_body("request body is not JSON", "invalid_request_error"), 400)
        want_stream = bool(body.get("stream"))
        text = prompt_text(path, body)
        received = dict(body) if keep_text else None
        rec = ledger.new(
            request=received,
            path=path,
            model=body.get("model"),
            prompt_sha256=digest(text),
            prompt_chars=len(text),
            max_tokens=body.get("max_tokens", body.get("max_completion_tokens")),
            forced=force and force_length(body),
            t_recv=time.monotonic(),
            wall_recv=time.time(),
            sampling={k: body[k] for k in SAMPLING_KEYS if body.get(k) is not None},
        )
        body["stream"] = True
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
        req = client.build_request("POST", path, content=orjson.dumps(body), headers=_fwd(request, json=True))
        try:
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as e:
            return _fail(rec, 502, f"backend {backend} unreachable: {e!r}")
        if resp.status_code != 200:
            content = await resp.aread()
            await resp.aclose()
            rec.status = resp.status_code
            rec.error = content[:500].decode(errors="replace")
            rec.t_end = time.monotonic()
            ledger.done(rec)
            return Response(content, resp.status_code, media_type=resp.headers.get("content-type"))
        rec.status = 200
        if want_stream:
            return StreamingResponse(_relay(resp, rec, {}), media_type="text/event-stream")
        answer: dict = {}
        try:
            async for _ in _relay(resp, rec, answer):
                pass
        except _BackendBroke as e:
            return _fail(rec, 502, str(e))
        return Response(orjson.dumps(answer), media_type="application/json")

    def _fail(rec: ProxyRecord, status: int, message: str) -> Response:
        rec.status = status
        rec.error = message
        rec.t_end = time.monotonic()
        ledger.done(rec)
        return JSONResponse(error_body(message, "backend_error"), status)

    async def _relay(resp: httpx.Response, rec: ProxyRecord, answer: dict):
        """Yield SSE lines unchanged while recording timings, text and usage; fill `answer`
        with the equivalent non-streamed response."""
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        first: dict | None = None
        usage = None
        chat = rec.path.endswith("chat/completions")
        try:
            async for line in resp.aiter_lines():
                yield line + "\n"
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    continue
                chunk = orjson.loads(data)
                if "error" in chunk:
                    raise _BackendBroke(f"backend error mid-stream: {chunk['error']}")
                first = first or chunk
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for ch in chunk.get("choices") or []:
                    piece = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                    if piece:
                        if rec.t_first_token is None:
                            rec.t_first_token = time.monotonic()
                        rec.chunks += 1
                        texts.setdefault(ch.get("index", 0), []).append(piece)
                    if ch.get("finish_reason"):
                        finish[ch.get("index", 0)] = ch["finish_reason"]
        except (httpx.HTTPError, orjson.JSONDecodeError) as e:
            raise _BackendBroke(f"backend stream broke: {e!r}") from None
        finally:
            await resp.aclose()
            rec.t_end = time.monotonic()
            out = "".join(texts.get(0, []))
            rec.output_sha256 = digest(out)
            rec.output_chars = len(out)
            if keep_text:
                rec.output = out
            rec.finish_reason = finish.get(0)
            if usage:
                rec.prompt_tokens = usage.get("prompt_tokens")
                rec.completion_tokens = usage.get("completion_tokens")
            ledger.done(rec)
        first = first or {}
        idx = sorted(set(texts) | set(finish)) or [0]
        if chat:
            choices = [
                {"index": i, "message": {"role": "assistant", "content": "".join(texts.get(i, []))}, "finish_reason": finish.get(i), "logprobs": None}
                for i in idx
            ]
        else:
            choices = [{"index": i, "text": "".join(texts.get(i, [])), "finish_reason": finish.get(i), "logprobs": None} for i in idx]
        answer.update({
            "id": first.get("id", f"mrw-{rec.seq}"),
            "object": "chat.completion" if chat else "text_completion",
            "created": first.get("created", int(time.time())),
            "model": first.get("model", rec.model),
            "choices": choices,
            "usage": usage,
        })

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/mrw/requests", requests_after, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()

    return Starlette(routes=routes, lifespan=lifespan)


class _BackendBroke(Exception):
    pass


def _fwd(request, json: bool = False) -> dict[str, str]:
    h = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
    if json:
        h["content-type"] = "application/json"
    return h


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mrw.backend_proxy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", required=True, help="backend base URL, e.g. http://127.0.0.1:8200 (no /v1)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", type=Path, default=None, help="append one JSON line per request here")
    ap.add_argument("--no-force-length", action="store_true", help="record only; do not inject ignore_eos/min_tokens")
    ap.add_argument("--keep-text", action="store_true", help="also record request bodies and output text (debugging)")
    args = ap.parse_args(argv)

    import uvicorn

    ledger = Ledger(args.log)
    app = build_app(args.backend, ledger, force=not args.no_force_length, keep_text=args.keep_text)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""Any OpenAI-compatible server (SGLang, TGI, llama.cpp, transformers serve, hosted APIs).

One shared keep-alive pool of the lean HTTP/1.1 client (`http1`, sized for the run's
concurrency; httpx only for probes and health checks), streamed responses parsed line by line
with orjson as the bytes arrive: TTFT and inter-token times are measured at the
client, per request. The hot path is `run_call`: build a small dict, POST, read SSE lines.

A generic server is not assumed to honour vLLM's `min_tokens` / `ignore_eos`; what it does
honour is declared with `extra["supports"]` (CLI: `--openai-supports min_tokens,ignore_eos`),
vendor fields are added with `extra["body"]` (CLI: `--openai-extra JSON`), and whatever could
not be enforced is recorded in the run's fidelity instead of failing silently.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from mrw.errors import EngineError, EngineUnreachable, KnobError

from . import http1
from .base import Capabilities, CallResult, Engine, EngineOptions, Fidelity, Request

_loads = orjson.loads
_dumps = orjson.dumps
_perf = time.perf_counter

# What `--openai-supports` may name, and the capability each one turns on.
SUPPORT_FLAGS = ("min_tokens", "ignore_eos", "token_ids", "prefix_caching", "metrics")


def split_url(url: str) -> tuple[str, str]:
    """(server root, API base) from `http://h:p`, `http://h:p/` or `http://h:p/v1`."""
    u = url.strip().rstrip("/")
    if "://" not in u:
        u = "http://" + u
    root = u[: -len("/v1")] if u.endswith("/v1") else u
    return root, root + "/v1"


def redact_url(url: str) -> str:
    """The URL without credentials or query string: safe for run.json and error lines."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def why_unreachable(exc: BaseException) -> str:
    """A short reason for a failed connection, in words a person recognises."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = str(exc) or f"connection closed ({type(exc).__name__})"
    low = text.lower()
    if "refused" in low or "all connection attempts failed" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low or "name resolution" in low:
        return "host name not found"
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return "no answer (timed out)"
    return text


def error_message(status: int, body: bytes) -> str:
    """'HTTP 400: <the server's message>' from an OpenAI- or vLLM-style error body."""
    msg = ""
    try:
        doc = _loads(body)
        if isinstance(doc, dict):
            err = doc.get("error", doc)
            msg = err.get("message") if isinstance(err, dict) else str(err)
            msg = msg or doc.get("message") or doc.get("detail") or ""
    except orjson.JSONDecodeError:
        msg = body.decode("utf-8", "replace")
    msg = " ".join(str(msg).split())[:300]
    return f"HTTP {status}: {msg}" if msg else f"HTTP {status}"


class OpenAICompatEngine(Engine):
    name = "openai"
    display = "the OpenAI-compatible server"
    capabilities = Capabilities(streaming=True, reports_usage=True)

    def __init__(self, options: EngineOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.extra_body: dict[str, Any] = dict(o.extra.get("body") or {})
        supports = set(o.extra.get("supports") or ())
        bad = supports - set(SUPPORT_FLAGS)
        if bad:
            raise KnobError(f"--openai-supports: unknown feature(s) {sorted(bad)}; choose from {', '.join(SUPPORT_FLAGS)}")
        self.supports = supports
        self.api_key = os.environ.get(o.extra.get("api_key_env") or "OPENAI_API_KEY") or None
        self.model: str | None = o.model
        self.model_info: dict[str, Any] = {}
        self.server_version: str | None = None
        self.client: http1.Http1Pool | None = None
        self.usage_missing = 0  # responses that carried no usage block
        self._extra_chunk_fields: dict[str, Any] = {}  # per-request fields an adapter adds (vLLM: token ids)
        if o.url is not None:
            self.root, self.api = split_url(o.url)
        else:
            self.root = self.api = ""
        self._chat_url = self.api + "/chat/completions"
        self._cmpl_url = self.api + "/completions"

        self._headers = {"content-type": "application/json"}
        if self.api_key:
            self._headers["authorization"] = f"Bearer {self.api_key}"
        caps = self.capabilities
        self.capabilities = Capabilities(
            exact_output_length=caps.exact_output_length or {"min_tokens", "ignore_eos"} <= supports,
            token_id_prompts=caps.token_id_prompts or "token_ids" in supports,
            streaming=True,
            whole_workflow=False,
            metrics_endpoint=caps.metrics_endpoint or "metrics" in supports,
            prefix_caching=caps.prefix_caching or "prefix_caching" in supports,
            reports_usage=True,
        )
        self.min_tokens_ok = caps.exact_output_length or "min_tokens" in supports
        self.ignore_eos_ok = caps.exact_output_length or "ignore_eos" in supports

    # ------------------------------------------------------------------ lifecycle

    def _check_knobs(self) -> None:
        """A generic server is started by its owner: no launch knob can be applied."""
        knobs = self.options.knobs.set()
        if knobs:
            names = ", ".join("--" + k.replace("_", "-") for k in knobs)
            raise KnobError(
                f"{names}: {self.name} cannot apply engine knobs to a server it did not start; "
                "set them where the server is launched and drop them here"
            )

    def _new_client(self) -> http1.Http1Pool:
        """The hot path's client: one keep-alive pool for the whole run. Waiting for a free
        connection is part of issue lateness, not an error."""
        o = self.options
        u = urlsplit(self.api)
        tls = u.scheme == "https"
        self._chat_path = u.path + "/chat/completions"
        self._cmpl_path = u.path + "/completions"
        return http1.Http1Pool(
            u.hostname or "localhost",
            u.port or (443 if tls else 80),
            tls=tls,
            limit=o.max_connections,
            connect_timeout=o.connect_timeout_s,
            read_timeout=o.request_timeout_s,
            headers={k: v for k, v in self._headers.items() if k != "content-type"},
        )

    def unreachable(self, reason: str) -> EngineUnreachable:
        return EngineUnreachable(f"cannot reach {self.display} at {redact_url(self.root)}: {reason}; start it or check --url")

    async def preflight(self) -> None:
        if self.options.url is None:
            raise EngineError(f"--engine {self.name} needs --url (the server's address, e.g. http://localhost:8000/v1)")
        self._check_knobs()
        await self._probe()

    async def _probe(self) -> None:
        """GET /v1/models: the server answers, and the model name is resolved."""
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.options.connect_timeout_s), headers=self._headers, trust_env=False) as c:
            try:
                r = await c.get(self.api + "/models")
            except httpx.HTTPError as e:
                raise self.unreachable(why_unreachable(e)) from None
            if r.status_code in (401, 403):
                raise EngineError(
                    f"{redact_url(self.api)} refused the API key ({error_message(r.status_code, r.content)}); "
                    f"set {self.options.extra.get('api_key_env') or 'OPENAI_API_KEY'}"
                )
            served: list[dict] = []
            if r.status_code == 200:
                try:
                    served = [m for m in _loads(r.content).get("data", []) if isinstance(m, dict)]
                except (orjson.JSONDecodeError, AttributeError):
                    served = []
            ids = [m.get("id") for m in served]
            if self.model is None:
                if len(ids) == 1:
                    self.model = ids[0]
                elif not ids:
                    raise EngineError(f"{redact_url(self.api)} lists no models; name the model with --model")
                else:
                    raise EngineError(f"{redact_url(self.api)} serves several models ({', '.join(map(str, ids[:8]))}); pick one with --model")
            elif ids and self.model not in ids:
                raise EngineError(f"model {self.model!r} is not served at {redact_url(self.api)}; it serves: {', '.join(map(str, ids[:8]))}")
            self.model_info = next((m for m in served if m.get("id") == self.model), {})
            try:
                v = await c.get(self.root + "/version")
                if v.status_code == 200:
                    self.server_version = _loads(v.content).get("version")
            except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError):
                pass

    async def start(self) -> None:
        if self.client is None:
            self.client = self._new_client()

    async def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            try:
                await c.close()
            except Exception:
                pass

    health_path = "/v1/models"

    async def health(self) -> str | None:
        """Asked after a failed request. Runs in a thread with its own blocking client, so a
        replayer whose event loop is saturated does not mistake its own slowness for a dead
        engine; a refused connection is final, a silent one gets a second chance."""
        url = self.root + self.health_path
        headers = self._headers

        def probe() -> str | None:
            last = ""
            for attempt in range(2):
                try:
                    with httpx.Client(timeout=5.0, headers=headers, trust_env=False) as c:
                        r = c.get(url)
                    if r.status_code < 500:
                        return None
                    last = f"answers HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    last = why_unreachable(e)
                    if last == "connection refused":
                        break
                time.sleep(1.0 + attempt)
            return f"{self.display} at {redact_url(self.root)} stopped answering ({last})"

        return await asyncio.to_thread(probe)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"engine": self.name, "url": redact_url(self.api) if self.api else None, "model": self.model}
        if self.server_version:
            d["server_version"] = self.server_version
        if self.model_info.get("max_model_len"):
            d["max_model_len"] = self.model_info["max_model_len"]
        if self.model_info.get("root"):
            d["model_path"] = self.model_info["root"]
        if self.supports:
            d["declared_support"] = sorted(self.supports)
        if self.extra_body:
            d["extra_body_keys"] = sorted(self.extra_body)  # values may be vendor secrets: keys only
        return d

    def fidelity(self) -> Fidelity:
        f = super().fidelity()
        if not self.capabilities.exact_output_length:
            f.notes[:] = [
                n for n in f.notes if "output length" not in n
            ] + [
                f"{self.name}: output length capped by max_tokens but not forced "
                f"(server not declared to honour {' and '.join(x for x in ('min_tokens', 'ignore_eos') if x not in self.supports)}; "
                "see --openai-supports)"
            ]
        if self.usage_missing:
            f.input_length_checked = False
            f.notes.append(f"{self.name}: {self.usage_missing} response(s) carried no usage; output tokens counted as streamed chunks")
        return f

    # ------------------------------------------------------------------ hot path

    def body(self, req: Request) -> dict[str, Any]:
        b: dict[str, Any] = {"model": self.model}
        if req.messages is not None:
            b["messages"] = req.messages
        else:
            b["prompt"] = req.prompt
        if req.sampling:
            b.update(req.sampling)
        b["max_tokens"] = req.max_tokens
        if req.min_tokens is not None and self.min_tokens_ok:
            b["min_tokens"] = req.min_tokens
        if req.ignore_eos and self.ignore_eos_ok:
            b["ignore_eos"] = True
        b["stream"] = True
        b["stream_options"] = {"include_usage": True}
        if self._extra_chunk_fields:
            b.update(self._extra_chunk_fields)
        if self.extra_body:
            b.update(self.extra_body)
        return b

    async def warm(self, connections: int) -> None:
        if self.client is not None and connections > 0:
            await self.client.warm(connections)

    def encode(self, req: Request) -> bytes:
        return _dumps(self.body(req))

    async def run_call(self, req: Request) -> CallResult:
        chat = req.messages is not None or req.chat
        res = CallResult(
            call_id=req.call_id,
            workflow_id=req.workflow_id,
            node=req.node,
            ok=False,
            expected_input_tokens=req.expected_input_tokens,
            expected_output_tokens=req.max_tokens,
        )
        pool = self.client
        if pool is None:
            res.error = "engine not started"
            return res
        content = req.body if req.body is not None else _dumps(self.body(req))
        t0 = self.t0
        sse = _SSE(chat, t0, req.keep_output)

        def sent() -> None:
            res.t_issue = _perf() - t0

        try:
            status, err_body = await pool.stream(self._chat_path if chat else self._cmpl_path, content, sse.feed, sent)
        except http1.ReadTimeout:
            res.t_end = _perf() - t0
            res.error = f"timed out: no data for {self.options.request_timeout_s:g} s (--request-timeout)"
            res.extra["error_kind"] = "timeout"
            return res
        except http1.TransportError as e:
            res.t_end = _perf() - t0
            res.error = f"connection lost: {why_unreachable(e)}"
            res.extra["error_kind"] = "transport"
            return res
        res.t_end = _perf() - t0
        if status != 200:
            res.error = error_message(status, err_body)
            res.extra["error_kind"] = "http"
            return res
        if sse.error is not None:
            res.error = sse.error
            res.extra["error_kind"] = "stream"
            return res
        times = sse.times
        if times:
            res.t_first_token = times[0]
        res.token_times = times
        usage = sse.usage
        if usage:
            res.input_tokens = usage.get("prompt_tokens")
            res.output_tokens = usage.get("completion_tokens")
        else:
            self.usage_missing += 1
            res.output_tokens = len(times)
        if sse.parts is not None:
            res.output = "".join(sse.parts)
        finish = sse.finish
        if finish is None:
            res.error = "stream ended before the response finished"
            res.extra["error_kind"] = "stream"
            return res
        if finish not in ("length", "stop"):
            res.extra["finish_reason"] = finish
        res.ok = True
        return res


class _SSE:
    """Server-sent events of one streamed completion, parsed as the bytes arrive.

    Each `data:` line is one JSON chunk; a chunk that carries text (or token ids) is a token
    and its arrival time is kept. vLLM's first chat chunk is a role-only "" before any token:
    not a token. A token can decode to "" (a split UTF-8 character): token ids count too."""

    __slots__ = ("chat", "t0", "times", "parts", "usage", "finish", "error", "buf", "done")

    def __init__(self, chat: bool, t0: float, keep_output: bool):
        self.chat = chat
        self.t0 = t0
        self.times: list[float] = []
        self.parts: list[str] | None = [] if keep_output else None
        self.usage: dict | None = None
        self.finish: str | None = None
        self.error: str | None = None
        self.buf = b""
        self.done = False

    def feed(self, data: bytes, t_rx: float) -> None:
        if self.done:
            return
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        now = t_rx - self.t0
        for line in lines:
            if line[:5] != b"data:":
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                return
            if not payload:
                continue
            try:
                obj = _loads(payload)
            except orjson.JSONDecodeError as e:
                self.error = f"unparseable stream line ({e})"
                self.done = True
                return
            choices = obj.get("choices")
            if choices:
                ch = choices[0]
                text = ch["delta"].get("content") if self.chat else ch.get("text")
                if text or ch.get("token_ids"):
                    self.times.append(now)
                    if self.parts is not None and text:
                        self.parts.append(text)
                fr = ch.get("finish_reason")
                if fr:
                    self.finish = fr
            u = obj.get("usage")
            if u:
                self.usage = u
            err = obj.get("error")
            if err:
                self.error = "stream error: " + " ".join(str(err.get("message", err) if isinstance(err, dict) else err).split())[:300]
                self.done = True
                return

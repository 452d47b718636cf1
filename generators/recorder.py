"""The recorder: sits between a LangGraph graph and an OpenAI-compatible LLM endpoint and
turns every LLM call into a trace `Call`.

Where it observes: at the HTTP transport of the client (httpx), not inside one client
library. Every OpenAI-compatible client in Python that matters (openai, langchain-openai,
litellm's openai path) sends through httpx, so one observation point records the built-in
workloads (they pass `RecordingAsyncTransport` to their `openai.AsyncOpenAI`) and an
unmodified user graph (`observe_httpx()` wraps httpx's default transports for the duration of
the recording, and OPENAI_BASE_URL points default-built clients at the engine). An HTTP proxy
would see the same bytes but not the caller's context; in-process, the request runs inside
the graph node's task, so LangGraph's runtime config names the node
(`get_config()["metadata"]["langgraph_node"]`) and the workflow (our `mrw_workflow`
metadata) without the graph author declaring either.

What a call records: the request's messages (split into text/ref segments by
`textdeps.OutputRegistry`), sampling, issue / first-token / end times relative to the trace
start (streamed requests get `stream_options.include_usage` added so usage comes back), the
usage token counts and the output text. `wait_s` is the issue time minus the latest
dependency's end (or the workflow's arrival when it has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gzip
import importlib
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import httpx
import orjson

from mrw.generators.textdeps import MIN_CHARS, OutputRegistry
from mrw.trace import Call, Header, Message, Trace, Workflow, dump

# Workflow of the running code when it is not inside a LangGraph node (plain async code).
_CURRENT_WORKFLOW: contextvars.ContextVar[str | None] = contextvars.ContextVar("mrw_workflow", default=None)
_CURRENT_NODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("mrw_node", default=None)

LLM_PATHS = ("/chat/completions", "/completions")
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "min_tokens", "seed", "stop",
                 "ignore_eos", "presence_penalty", "frequency_penalty", "n")


def _context() -> tuple[str | None, str | None]:
    """(workflow id, node name) of the code issuing a request."""
    wid = node = None
    try:
        from langgraph.config import get_config

        md = get_config().get("metadata", {}) or {}
        wid = md.get("mrw_workflow")
        node = md.get("langgraph_node")
    except Exception:  # outside a runnable context
        pass
    return wid or _CURRENT_WORKFLOW.get(), _CURRENT_NODE.get() or node


@contextlib.contextmanager
def node_name(name: str) -> Iterator[None]:
    """Name the calls made inside this block (for code outside LangGraph nodes, or to split
    one node's calls into roles)."""
    tok = _CURRENT_NODE.set(name)
    try:
        yield
    finally:
        _CURRENT_NODE.reset(tok)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@dataclass(slots=True)
class _WorkflowState:
    id: str
    arrival_s: float
    tags: dict
    registry: OutputRegistry
    calls: list[Call] = field(default_factory=list)
    open_calls: int = 0
    n: int = 0


@dataclass(slots=True)
class Observation:
    """One LLM request in flight: fed the response bytes, finished when they end."""

    rec: "Recorder"
    wf: _WorkflowState
    call: Call
    chat: bool
    stream: bool
    encoding: str | None = None
    buf: bytes = b""
    parts: list[str] = field(default_factory=list)
    usage: dict | None = None
    done: bool = False

    def feed(self, chunk: bytes) -> None:
        if not self.stream:
            self.buf += chunk
            return
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]" or not payload:
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if obj.get("usage"):
                self.usage = obj["usage"]
            for ch in obj.get("choices") or []:
                if ch.get("index", 0) != 0:
                    continue
                delta = ch.get("delta") or {}
                piece = delta.get("content") if self.chat else ch.get("text")
                if piece is None and self.chat:
                    piece = delta.get("reasoning_content")
                if piece:
                    if self.call.t_first_token is None:
                        self.call.t_first_token = self.rec.now()
                    self.parts.append(piece)
                elif self.chat and delta.get("tool_calls") and self.call.t_first_token is None:
                    self.call.t_first_token = self.rec.now()

    def finish(self, ok: bool = True) -> None:
        if self.done:
            return
        self.done = True
        if ok and not self.stream:
            body = self.buf
            if self.encoding in ("gzip", "deflate"):
                with contextlib.suppress(Exception):
                    body = gzip.decompress(body) if self.encoding == "gzip" else zlib.decompress(body)
            try:
                obj = orjson.loads(body)
                self.usage = obj.get("usage")
                ch = (obj.get("choices") or [{}])[0]
                text = (ch.get("message") or {}).get("content") if self.chat else ch.get("text")
                self.parts = [text or ""]
            except (orjson.JSONDecodeError, AttributeError, IndexError):
                ok = False
        self.rec._end_call(self, ok)


class Recorder:
    """Collects workflows and their calls; builds and writes the trace.

    Thread-safe enough for sync graph nodes: call ids and registries are only mutated under
    the GIL in short critical sections, and each workflow's state is its own.
    """

    def __init__(
        self,
        header: Header,
        base_url: str,
        *,
        out: str | os.PathLike | None = None,
        min_chars: int = MIN_CHARS,
        keep_text: bool = True,
        token_count: Callable[[str], int] | None = None,
        on_call: Callable[[], None] | None = None,
        on_workflow: Callable[[], None] | None = None,
    ):
        self.header = header
        self.base_url = base_url.rstrip("/")
        self.out = Path(out) if out else None
        self.min_chars = min_chars
        self.keep_text = keep_text
        self.token_count = token_count or (lambda s: max(1, math.ceil(len(s) / 4)))
        self.on_call = on_call
        self.on_workflow = on_workflow
        self.t0 = time.monotonic()
        self._open: dict[str, _WorkflowState] = {}
        self.completed: list[Workflow] = []
        self.failed: dict[str, str] = {}
        self.unattributed = 0
        self.estimated_usage = 0
        self.calls_done = 0
        self._last_write = 0.0

    # ------------------------------------------------------------------ time, workflows

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 6)

    def open_workflow(self, wid: str, tags: dict | None = None) -> None:
        self._open[wid] = _WorkflowState(wid, self.now(), dict(tags or {}), OutputRegistry(self.min_chars))

    def close_workflow(self, wid: str, error: BaseException | None = None) -> Workflow | None:
        """Move a finished workflow into the trace (or drop it when it failed or made no call)."""
        st = self._open.pop(wid)
        if error is not None:
            self.failed[wid] = f"{type(error).__name__}: {error}"
            return None
        calls = sorted((c for c in st.calls if c.t_end is not None), key=lambda c: c.t_issue or 0.0)
        if not calls:
            self.failed[wid] = "made no LLM call through the recorder"
            return None
        wf = Workflow(id=wid, arrival_s=st.arrival_s, calls=calls, tags=st.tags)
        self.completed.append(wf)
        if self.on_workflow:
            self.on_workflow()
        self.checkpoint()
        return wf

    @contextlib.contextmanager
    def workflow(self, wid: str, tags: dict | None = None) -> Iterator[None]:
        """Run plain code as one workflow (LangGraph runs use `run_graph`)."""
        self.open_workflow(wid, tags)
        tok = _CURRENT_WORKFLOW.set(wid)
        try:
            yield
        except BaseException as e:
            _CURRENT_WORKFLOW.reset(tok)
            self.close_workflow(wid, e)
            raise
        _CURRENT_WORKFLOW.reset(tok)
        self.close_workflow(wid)

    # ------------------------------------------------------------------ calls

    def wants(self, url: httpx.URL) -> bool:
        u = str(url)
        return u.startswith(self.base_url) and u.split("?")[0].endswith(LLM_PATHS)

    def begin_call(self, body: dict, path: str) -> Observation | None:
        wid, node = _context()
        st = self._open.get(wid) if wid else None
        if st is None:
            self.unattributed += 1
            return None
        t_issue = self.now()
        chat = path.endswith("/chat/completions")
        st.n += 1
        cid = f"{st.id}.c{st.n:03d}"
        deps: list[str] = []
        messages = prompt = None
        if chat:
            messages = []
            for m in body.get("messages") or []:
                segs, d = st.registry.split(_content_text(m.get("content")))
                deps += [x for x in d if x not in deps]
                role = m.get("role", "user")
                messages.append(Message(role if role != "function" else "tool", segs))
        else:
            p = body.get("prompt")
            prompt, deps = st.registry.split(p if isinstance(p, str) else _content_text(p))
        ends = {c.id: c.t_end for c in st.calls}
        dep_end = max((ends[d] for d in deps if ends.get(d) is not None), default=st.arrival_s)
        sampling = {k: body[k] for k in SAMPLING_KEYS if body.get(k) is not None}
        if "max_completion_tokens" in sampling and "max_tokens" not in sampling:
            sampling["max_tokens"] = sampling.pop("max_completion_tokens")
        call = Call(
            id=cid,
            node=node or "llm",
            deps=deps,
            wait_s=round(max(0.0, t_issue - dep_end), 6),
            messages=messages,
            prompt=prompt,
            sampling=sampling,
            t_issue=t_issue,
        )
        st.calls.append(call)
        st.open_calls += 1
        return Observation(self, st, call, chat, bool(body.get("stream")))

    def _end_call(self, obs: Observation, ok: bool) -> None:
        st, call = obs.wf, obs.call
        st.open_calls -= 1
        if not ok:
            st.calls.remove(call)
            return
        call.t_end = self.now()
        if call.t_first_token is None:
            call.t_first_token = call.t_end if obs.stream else None
        text = "".join(obs.parts)
        u = obs.usage or {}
        if u.get("prompt_tokens") is not None and u.get("completion_tokens") is not None:
            call.input_tokens = int(u["prompt_tokens"])
            call.output_tokens = int(u["completion_tokens"])
        else:  # the server sent no usage: estimate, and say so in the header
            self.estimated_usage += 1
            rendered = call.render_prompt({c.id: c.output or "" for c in st.calls})
            call.input_tokens = self.token_count(rendered)
            call.output_tokens = self.token_count(text) if text else 0
        call.output = text
        st.registry.add(call.id, text, call.t_end)
        self.calls_done += 1
        if self.on_call:
            self.on_call()

    # ------------------------------------------------------------------ trace

    def trace(self) -> Trace:
        h = self.header
        extra = dict(h.extra)
        rec = extra.setdefault("recording", {})
        rec.update({"min_ref_chars": self.min_chars, "failed_workflows": dict(self.failed)})
        if self.estimated_usage:
            rec["calls_with_estimated_usage"] = self.estimated_usage
        if self.unattributed:
            rec["unattributed_calls"] = self.unattributed
        h.extra = extra
        wfs = sorted(self.completed, key=lambda w: w.arrival_s)
        if not self.keep_text:
            wfs = [_strip_text(w) for w in wfs]
        return Trace(header=h, workflows=wfs)

    def checkpoint(self, force: bool = False) -> None:
        """Write the trace of the workflows completed so far (atomic; at most every 2 s)."""
        if self.out is None:
            return
        t = time.monotonic()
        if force or t - self._last_write >= 2.0:
            dump(self.trace(), self.out)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.out, 0o666 & ~umask)  # a trace is for sharing (the temp file was 0600)
            self._last_write = t


def _strip_text(w: Workflow) -> Workflow:
    calls = []
    for c in w.calls:
        d = c.to_dict()
        for k in ("messages", "prompt", "output"):
            d.pop(k, None)
        calls.append(Call.from_dict(d))
    return Workflow(w.id, w.arrival_s, calls, w.tags)


# ---------------------------------------------------------------------------- transport


def _prepare(rec: Recorder, request: Any, hx: Any) -> tuple[Any, Observation | None]:
    """Parse an LLM request, ask for usage on streams, and open its Observation."""
    if request.method != "POST" or not rec.wants(request.url) or request.extensions.get("mrw_observed"):
        return request, None
    try:
        body = orjson.loads(request.content)
    except (orjson.JSONDecodeError, hx.RequestNotRead):
        return request, None
    if not isinstance(body, dict):
        return request, None
    if body.get("stream") and not (body.get("stream_options") or {}).get("include_usage"):
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
        request = hx.Request(request.method, request.url, headers=headers, content=orjson.dumps(body),
                             extensions=request.extensions)
    request.extensions = {**request.extensions, "mrw_observed": True}  # observed once, even when transports nest
    obs = rec.begin_call(body, request.url.path)
    return request, obs


@functools.cache
def _streams(hx: Any) -> tuple[type, type]:
    """Byte-stream wrappers for one httpx-like module (httpx, or httpx2 which openai 3 uses)."""

    class AsyncObserved(hx.AsyncByteStream):
        def __init__(self, inner, obs: Observation):
            self.inner, self.obs = inner, obs

        async def __aiter__(self):
            try:
                async for chunk in self.inner:
                    self.obs.feed(chunk)
                    yield chunk
            except BaseException:
                self.obs.finish(ok=False)
                raise

        async def aclose(self) -> None:
            try:
                await self.inner.aclose()
            finally:
                self.obs.finish(ok=True)

    class SyncObserved(hx.SyncByteStream):
        def __init__(self, inner, obs: Observation):
            self.inner, self.obs = inner, obs

        def __iter__(self):
            try:
                for chunk in self.inner:
                    self.obs.feed(chunk)
                    yield chunk
            except BaseException:
                self.obs.finish(ok=False)
                raise

        def close(self) -> None:
            try:
                self.inner.close()
            finally:
                self.obs.finish(ok=True)

    return AsyncObserved, SyncObserved


async def observe_async(rec: Recorder, request: Any, send: Callable[[Any], Awaitable[Any]], hx: Any = httpx) -> Any:
    request, obs = _prepare(rec, request, hx)
    if obs is None:
        return await send(request)
    try:
        resp = await send(request)
    except BaseException:
        obs.finish(ok=False)
        raise
    if resp.status_code != 200:
        obs.finish(ok=False)
        return resp
    obs.encoding = resp.headers.get("content-encoding")
    return hx.Response(resp.status_code, headers=resp.headers, stream=_streams(hx)[0](resp.stream, obs),
                       extensions=resp.extensions, request=request)


def observe_sync(rec: Recorder, request: Any, send: Callable[[Any], Any], hx: Any = httpx) -> Any:
    request, obs = _prepare(rec, request, hx)
    if obs is None:
        return send(request)
    try:
        resp = send(request)
    except BaseException:
        obs.finish(ok=False)
        raise
    if resp.status_code != 200:
        obs.finish(ok=False)
        return resp
    obs.encoding = resp.headers.get("content-encoding")
    return hx.Response(resp.status_code, headers=resp.headers, stream=_streams(hx)[1](resp.stream, obs),
                       extensions=resp.extensions, request=request)


class RecordingAsyncTransport(httpx.AsyncBaseTransport):
    """An httpx transport that records the LLM requests going through it."""

    def __init__(self, rec: Recorder, inner: httpx.AsyncBaseTransport | None = None):
        self.rec = rec
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await observe_async(self.rec, request, self.inner.handle_async_request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def http_modules() -> list[Any]:
    """The httpx-like modules installed: httpx, and httpx2 (openai >= 3 sends through it)."""
    mods = []
    for name in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError):
            mods.append(importlib.import_module(name))
    return mods


@contextlib.contextmanager
def observe_httpx(rec: Recorder) -> Iterator[None]:
    """Record every LLM request any httpx (or httpx2) client in this process sends to the
    engine, for the duration of the block. This is how an unmodified user graph is recorded:
    its openai (or langchain-openai) client builds its own HTTP client, whose default transport
    is wrapped."""
    saved = []
    for hx in http_modules():
        a_orig = hx.AsyncHTTPTransport.handle_async_request
        s_orig = hx.HTTPTransport.handle_request

        def a_wrapped(self, request, _orig=a_orig, _hx=hx):
            return observe_async(rec, request, lambda r: _orig(self, r), _hx)

        def s_wrapped(self, request, _orig=s_orig, _hx=hx):
            return observe_sync(rec, request, lambda r: _orig(self, r), _hx)

        saved.append((hx, a_orig, s_orig))
        hx.AsyncHTTPTransport.handle_async_request = a_wrapped
        hx.HTTPTransport.handle_request = s_wrapped
    try:
        yield
    finally:
        for hx, a_orig, s_orig in saved:
            hx.AsyncHTTPTransport.handle_async_request = a_orig
            hx.HTTPTransport.handle_request = s_orig


# ---------------------------------------------------------------------------- running workflows


@dataclass(slots=True)
class WorkflowSpec:
    """One workflow to record: a compiled LangGraph graph (anything with `ainvoke`), its input
    state, its planned arrival offset (s) and tags (e.g. {"kind": "copilot"})."""

    id: str
    graph: Any
    inputs: Any
    arrival_s: float = 0.0
    tags: dict = field(default_factory=dict)


async def run_workflows(rec: Recorder, specs: list[WorkflowSpec], concurrency: int = 0) -> None:
    """Start each workflow at its planned arrival (relative to the recorder's start), at most
    `concurrency` at once (0: no limit). A workflow's recorded arrival is when it really
    started. A failing workflow is left out of the trace and named in its header."""
    sem = asyncio.Semaphore(concurrency) if concurrency and concurrency > 0 else None

    async def one(spec: WorkflowSpec) -> None:
        delay = spec.arrival_s - (time.monotonic() - rec.t0)
        if delay > 0:
            await asyncio.sleep(delay)
        async with sem if sem is not None else contextlib.nullcontext():
            rec.open_workflow(spec.id, spec.tags)
            tok = _CURRENT_WORKFLOW.set(spec.id)
            try:
                await spec.graph.ainvoke(
                    spec.inputs, config={"metadata": {"mrw_workflow": spec.id}, "recursion_limit": 10_000}
                )
            except asyncio.CancelledError:
                rec._open.pop(spec.id, None)
                raise
            except Exception as e:  # a broken workflow must not sink the whole recording
                rec.close_workflow(spec.id, e)
                return
            finally:
                _CURRENT_WORKFLOW.reset(tok)
            rec.close_workflow(spec.id)

    await asyncio.gather(*(one(s) for s in specs))

"""Parrot (microsoft/ParrotServe): a workflow-level engine, spoken to over its HTTP API only.

Parrot's client submits a whole workflow as *semantic calls* wired by *semantic variables*,
so its serve core sees the dependency graph (docs/engines.md, ../shared/parrot-api.md). This
adapter maps one trace workflow onto one Parrot session:

- each call becomes a semantic call whose template is the call's segments: text inline (so a
  shared system prompt is the constant text before the first placeholder, which Parrot hashes
  into a prefix shared across sessions), each `{"ref": id}` an input placeholder bound to the
  upstream call's output variable, and one output placeholder last with
  `max_gen_length = recorded output tokens` and `ignore_tokenizer_eos`;
- a chat call's messages are flattened into one template, because Parrot's OpenAI-type engine
  merges consecutive text into one `user` message anyway; where a message boundary joins two
  texts, the later text becomes a `value` input, so the first message (the system prompt) stays
  exactly Parrot's constant prefix;
- text that would parse as a placeholder (`{{name}}`) is passed as a `value` input;
- execution is lazy in Parrot: each batch of submitted calls carries `output_criteria` on its
  sinks (activating the whole upstream graph with Parrot's depth annotation, the way an app
  that GETs only final outputs would), then every output is fetched with a blocking GET; a
  call's end time is its GET's return. Parrot has no streaming: no TTFT;
- a recorded tool wait (`wait_s > 0`), and a dependency whose output the prompt does not splice
  in, cannot be expressed to Parrot: such a call is submitted client-side once its dependencies'
  outputs are back and the wait has passed, as a real app issues it only after its tool ran.

One session per workflow (not per run): a session is Parrot's unit of an application
instance, its variables are scoped to it, and a call failing inside Parrot marks only its
session bad; constant prefixes are global in Parrot, so sharing across workflows still shows.

Per-call token counts and backend timings come from the mrw backend proxy (mrw.backend_proxy)
when Parrot's engine forwards through one; Parrot itself returns only text.

Failures are reported per call, never raised from run_workflow: a refusal fails its workflow
(error_kind "parrot"); a hang (no output for the stall timeout) or a dead Parrot fails it
with error_kind "timeout"/"transport", after which the replayer asks health() and ends the
run if Parrot is gone. Parrot's engine exits on any backend error and takes its serve core
with it, so calls that cannot fit the backend's context are refused here, unsent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mrw.backend_proxy import digest
from mrw.errors import EngineError, EngineUnreachable, KnobError, LaunchError
from mrw.trace import Call, Workflow

from .base import Capabilities, CallResult, Engine, EngineOptions, Fidelity, Request, ResultSink
from .openai_compat import redact_url, why_unreachable

PLACEHOLDER = re.compile(r"{{[a-zA-Z_][a-zA-Z0-9_]*}}")  # Parrot's own PLACEHOLDER_REGEX
PARROT_ERROR = re.compile(r"msg=(.*)\)\s*$", re.S)
MESSAGE_SEP = "\n\n"  # between flattened chat messages
SAMPLING_FORWARDED = ("temperature", "top_p")  # what Parrot's OpenAI-type engine passes on


@dataclass(slots=True)
class ParrotOptions:
    """Parrot-specific settings (CLI: --parrot-url, --parrot-proxy-url, --parrot-criteria, ...)."""

    url: str | None = None  # a running serve core; None: mrw launches vLLM + proxy + Parrot
    proxy_url: str | None = None  # the mrw backend proxy Parrot's engine forwards through
    criteria: str = "latency"  # Parrot's performance criteria: latency | throughput
    models: list[str] = field(default_factory=list)  # restrict to engines serving these models
    request_timeout_s: float = 30.0  # submits, variables, sessions
    stall_timeout_s: float = 600.0  # a workflow with no output for this long has hung
    probe_interval_s: float = 2.0  # session liveness probe (also keeps the session alive)
    preflight: bool = True  # one 1-token call at start: proves an engine runs text calls
    preflight_timeout_s: float = 60.0
    max_model_len: int | None = None  # refuse calls that cannot fit; default: asked of the backend
    scheduler: bool = True  # launched Parrot: its DAG/context-aware scheduler switches on


class _Fatal(EngineError):
    """Ends one workflow: Parrot refused, died, dropped the session, or hung. `kind` becomes
    the results' extra.error_kind: "transport" makes the replayer ask health() whether Parrot
    is dead, "timeout" too, "parrot" is a refusal of this workflow only."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class _Piece:
    kind: str  # "text" | "ref" | "value"
    text: str = ""
    ref: str = ""


@dataclass(slots=True)
class SemanticCall:
    """One trace call as a Parrot semantic call (before upstream var ids are known)."""

    call_id: str
    pieces: list[_Piece]
    max_gen_length: int
    sampling: dict[str, Any]
    dropped_sampling: list[str]

    def payload(self, auth: dict, var_ids: dict[str, str], *, model_type: str = "text", models=(), criteria=None) -> dict:
        template, params, n = [], [], 0
        for p in self.pieces:
            if p.kind == "text":
                template.append(p.text)
                continue
            n += 1
            name = f"in{n}" if p.kind == "ref" else f"lit{n}"
            template.append("{{" + name + "}}")
            if p.kind == "ref":
                params.append({"name": name, "is_output": False, "var_id": var_ids[p.ref]})
            else:
                params.append({"name": name, "is_output": False, "value": p.text})
        template.append("{{out}}")
        sc = {"max_gen_length": self.max_gen_length, "ignore_tokenizer_eos": True, **self.sampling}
        params.append({"name": "out", "is_output": True, "sampling_config": sc})
        return {
            **auth,
            "func_name": self.call_id,
            "template": "".join(template),
            "parameters": params,
            "model_type": model_type,
            "models": list(models),
            "cache_prefix": True,
            "output_criteria": criteria,
        }

    def prompt(self, outputs: dict[str, str]) -> str:
        """The text Parrot's engine sends for this call (one merged user message)."""
        return "".join(outputs[p.ref] if p.kind == "ref" else p.text for p in self.pieces)


def _text_pieces(text: str, *, boundary: bool) -> list[_Piece]:
    """Literal text as pieces: inline where Parrot would read it as-is, a `value` where it holds
    a would-be placeholder or where it follows text across a message boundary."""
    if not text:
        return []
    if boundary:
        return [_Piece("value", text)]
    m = PLACEHOLDER.search(text)
    if m is None:
        return [_Piece("text", text)]
    out = [_Piece("text", text[: m.start()])] if m.start() else []
    return out + [_Piece("value", text[m.start() :])]


def plan_call(call: Call, req: Request | None) -> SemanticCall:
    """Turn a trace call (and its prepared Request) into a semantic call."""
    pieces: list[_Piece] = []
    if call.messages is not None:
        for i, msg in enumerate(call.messages):
            if i > 0:
                # A separator between messages; it opens a value when the previous piece is text,
                # so that the first message alone is Parrot's constant prefix.
                first = msg.content[0] if msg.content else None
                if first is not None and "text" in first:
                    pieces += _text_pieces(MESSAGE_SEP + first["text"], boundary=bool(pieces) and pieces[-1].kind == "text")
                    rest = msg.content[1:]
                else:
                    pieces += _text_pieces(MESSAGE_SEP, boundary=bool(pieces) and pieces[-1].kind == "text")
                    rest = msg.content
            else:
                rest = msg.content
            for seg in rest:
                if "ref" in seg:
                    pieces.append(_Piece("ref", ref=seg["ref"]))
                else:
                    pieces += _text_pieces(seg["text"], boundary=False)
    elif call.prompt is not None:
        for seg in call.prompt:
            if "ref" in seg:
                pieces.append(_Piece("ref", ref=seg["ref"]))
            else:
                pieces += _text_pieces(seg["text"], boundary=False)
    elif req is not None and (req.messages or isinstance(req.prompt, str)):
        # No text in the trace (anonymised): the replayer synthesised a prompt; deps stay
        # client-side (see `control_deps`).
        text = MESSAGE_SEP.join(m["content"] for m in req.messages) if req.messages else str(req.prompt)
        pieces += _text_pieces(text, boundary=False)
    else:
        raise EngineError(f"call {call.id} has no prompt text and the replayer gave none; Parrot needs text prompts")
    # Merge adjacent inline texts (a text piece after a text piece can only come from segments).
    merged: list[_Piece] = []
    for p in pieces:
        if p.kind == "text" and merged and merged[-1].kind == "text":
            merged[-1] = _Piece("text", merged[-1].text + p.text)
        elif p.kind != "text" or p.text:
            merged.append(p)
    sampling_src = dict(req.sampling if req is not None else call.sampling)
    max_tokens = req.max_tokens if req is not None else call.output_tokens
    sampling = {k: sampling_src[k] for k in SAMPLING_FORWARDED if sampling_src.get(k) is not None}
    sampling.setdefault("temperature", 0.0)
    dropped = sorted(k for k, v in sampling_src.items() if k not in SAMPLING_FORWARDED and k not in ("max_tokens", "min_tokens") and v is not None)
    return SemanticCall(call.id, merged, max(1, int(max_tokens)), sampling, dropped)


def control_deps(call: Call, sc: SemanticCall) -> list[str]:
    """Dependencies Parrot cannot see: the call waits for them but does not splice their text."""
    refs = {p.ref for p in sc.pieces if p.kind == "ref"}
    return [d for d in call.deps if d not in refs]


def parrot_message(resp: httpx.Response) -> str:
    """Parrot's error text: the `msg=` of `{"error": "ParrotError(type=..., msg=...)"}`, or the
    plain body (Parrot answers `Internal Server Error` for its internal assertions)."""
    try:
        err = resp.json().get("error")
    except ValueError:
        err = None
    if isinstance(err, str):
        m = PARROT_ERROR.search(err)
        return m.group(1).strip() if m else err
    text = resp.text.strip()[:200]
    return f"{text} (not a user error: Parrot's core log has the traceback)"


class ProxyLedger:
    """Per-request records of the mrw backend proxy, matched to calls by prompt and output
    digests (identical prompt+output pairs are interchangeable)."""

    def __init__(self, client: httpx.AsyncClient, url: str):
        self.client = client
        self.url = url.rstrip("/")
        self.cursor = 0
        self.pool: dict[tuple[str, str], list[dict]] = {}
        self.errors: list[dict] = []
        self._lock = asyncio.Lock()

        self.offset = 0.0  # add to a record's time (proxy's monotonic) to get our perf_counter

    async def health(self) -> dict:
        """Check the proxy and measure its clock against ours (best of 5 round trips), so
        that its records' times can be put on the run's clock even from another host."""
        best = None
        for _ in range(5):
            t0 = time.perf_counter()
            r = await self.client.get(f"{self.url}/health", timeout=5.0)
            t1 = time.perf_counter()
            r.raise_for_status()
            info = r.json()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, (t0 + t1) / 2 - info.get("monotonic", (t0 + t1) / 2), info)
        self.offset = best[1]
        return best[2]

    async def refresh(self) -> None:
        async with self._lock:
            r = await self.client.get(f"{self.url}/mrw/requests", params={"after": self.cursor}, timeout=10.0)
            r.raise_for_status()
            recs = r.json()
            self.cursor += len(recs)  # the proxy pages by finishing order
            for rec in recs:
                if rec.get("status") == 200 and rec.get("output_sha256"):
                    self.pool.setdefault((rec["prompt_sha256"], rec["output_sha256"]), []).append(rec)
                else:
                    self.errors.append(rec)

    async def take(self, prompt: str, output: str, tries: int = 4) -> dict | None:
        key = (digest(prompt), digest(output))
        for i in range(tries):
            recs = self.pool.get(key)
            if recs:
                return recs.pop(0)
            try:
                await self.refresh()
            except httpx.HTTPError:
                return None
            if i:
                await asyncio.sleep(0.05 * i)
        return None

    async def last_error(self) -> str | None:
        try:
            await self.refresh()
        except httpx.HTTPError:
            pass
        if not self.errors:
            return None
        e = self.errors[-1]
        return f"backend answered {e.get('status')}: {str(e.get('error'))[:200]}"


class ParrotEngine(Engine):
    """Replays whole workflows through Parrot: attached (`--parrot-url`) or launched."""

    name = "parrot"
    capabilities = Capabilities(
        exact_output_length=False,  # only with the mrw backend proxy in front of the backend
        token_id_prompts=False,
        streaming=False,
        whole_workflow=True,
        metrics_endpoint=False,  # Parrot has none; its backend vLLM's is scraped when known
        prefix_caching=True,
        reports_usage=False,  # Parrot returns text only; the proxy adds usage
    )

    def __init__(self, options: EngineOptions | None = None, *, parrot: ParrotOptions | None = None) -> None:
        super().__init__(options)
        self.opt = parrot or ParrotOptions(url=self.options.url)
        self.url = self.opt.url.rstrip("/").removesuffix("/v1") if self.opt.url else None
        self.stack: Any = None  # mrw.launch_parrot.ParrotStack when launched
        self.client: httpx.AsyncClient | None = None
        self.ledger: ProxyLedger | None = None
        self.proxy_info: dict | None = None
        self.backend_metrics: str | None = None
        self.max_model_len = self.opt.max_model_len or self.options.knobs.max_model_len
        self.process_cpu: dict[str, float | None] = {}
        self.served_models: list[str] = []  # what the backend serves (through the proxy)
        self._notes: set[str] = set()
        self._proxy_through: bool | None = None  # did the preflight call pass the proxy?
        proxied = self.embedded or self.opt.proxy_url is not None
        self.capabilities = dataclasses.replace(
            type(self).capabilities, exact_output_length=proxied, reports_usage=proxied, metrics_endpoint=self.embedded
        )

    @classmethod
    def from_options(cls, options: EngineOptions) -> "ParrotEngine":
        x = options.extra
        models = x.get("parrot_models") or ([options.model] if options.model and options.url else [])
        return cls(
            options,
            parrot=ParrotOptions(
                url=x.get("parrot_url") or options.url,
                proxy_url=x.get("parrot_proxy_url"),
                criteria=x.get("parrot_criteria", "latency"),
                models=list(models),
                stall_timeout_s=float(x.get("parrot_stall_timeout_s", options.request_timeout_s)),
                preflight=bool(x.get("parrot_preflight", True)),
                scheduler=bool(x.get("parrot_scheduler", True)),
            ),
        )

    @property
    def embedded(self) -> bool:
        return self.opt.url is None

    # ------------------------------------------------------------------ lifecycle

    async def preflight(self) -> None:
        if self.opt.criteria not in ("latency", "throughput"):
            raise KnobError(f"--parrot-criteria {self.opt.criteria}: Parrot knows 'latency' and 'throughput'")
        if self.embedded:
            self._launch_spec()  # Parrot importable, vLLM installed, model found: or fail now
            return
        knobs = self.options.knobs.set()
        if knobs:
            raise KnobError(
                f"{', '.join(sorted(knobs))}: cannot be applied to the Parrot at {redact_url(self.url)}, which mrw did not "
                "start; drop --parrot-url so that mrw launches Parrot and its vLLM with them"
            )
        async with self._client() as c:
            await self._probe_core(c)
            if self.opt.proxy_url:
                await self._probe_proxy(c)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.opt.request_timeout_s, connect=5.0),
            # GETs block until Parrot has the output: never let the pool queue them behind each other.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=128),
            trust_env=False,
        )

    async def _probe_core(self, c: httpx.AsyncClient) -> None:
        try:
            r = await c.request("DELETE", f"{self.url}/v1/session/-1", json={"session_id": -1, "session_auth": "1"}, timeout=10.0)
        except httpx.HTTPError as e:
            raise EngineUnreachable(
                f"nothing answers at Parrot URL {redact_url(self.url)} ({why_unreachable(e)}); start Parrot's serve core, "
                "or drop --parrot-url so that mrw launches it"
            ) from None
        if r.status_code != 500 or "ParrotError" not in r.text:
            raise EngineUnreachable(f"{redact_url(self.url)} answers, but not like a Parrot serve core (HTTP {r.status_code} to a session probe); check --parrot-url")

    async def _probe_proxy(self, c: httpx.AsyncClient) -> None:
        ledger = ProxyLedger(c, self.opt.proxy_url)
        try:
            self.proxy_info = await ledger.health()
        except httpx.HTTPError as e:
            raise EngineUnreachable(f"the mrw backend proxy at {redact_url(self.opt.proxy_url)} does not answer ({why_unreachable(e)})") from None
        backend = self.proxy_info.get("backend")
        if backend:
            try:
                r = await c.get(f"{backend}/metrics", timeout=5.0)
                if r.status_code == 200 and "vllm:" in r.text:
                    self.backend_metrics = f"{backend}/metrics"
                    self.capabilities = dataclasses.replace(self.capabilities, metrics_endpoint=True)
            except httpx.HTTPError:
                pass

    def _launch_spec(self) -> tuple[Any, Any, Any]:
        """What a launch needs, checked before any run directory exists."""
        from mrw.launch import VllmOptions, free_port, vllm_distribution
        from mrw.launch_parrot import ParrotLaunchOptions, find_parrot

        find_parrot()
        if vllm_distribution() is None:
            raise LaunchError("vLLM is not installed, and Parrot is launched in front of a vLLM: run scripts/setup, or pass --parrot-url")
        from .vllm import resolve_model

        spec = resolve_model(self.options.model)
        k = self.options.knobs
        vopts = VllmOptions(
            max_num_seqs=k.max_num_seqs, prefix_caching=k.prefix_caching, gpu_memory_utilization=k.gpu_memory_utilization,
            max_model_len=k.max_model_len, extra_args=list(k.engine_args),
        )  # fmt: skip
        popts = ParrotLaunchOptions(core_port=free_port(), engine_port=free_port(), proxy_port=free_port())
        popts.app_fifo = popts.graph_group = popts.ctx_group = popts.ctx_aware = self.opt.scheduler
        if k.max_num_seqs:
            popts.tasks_capacity = k.max_num_seqs
        return spec, vopts, popts

    async def start(self) -> None:
        if self.embedded and self.stack is None:
            from mrw.launch_parrot import ParrotStack

            spec, vopts, popts = self._launch_spec()
            run_dir = Path(self.options.log_dir) if self.options.log_dir else Path(tempfile.mkdtemp(prefix="mrw-parrot-"))
            self.stack = ParrotStack(run_dir, spec, vopts, popts, quiet=bool(self.options.extra.get("quiet")))
            await _start_stack(self.stack)
            self.url, self.opt.proxy_url = self.stack.core_url, self.stack.proxy_url
            if self.stack.vllm is not None:
                self.backend_metrics = self.stack.vllm.root_url + "/metrics"
        self.client = self._client()
        await self._probe_core(self.client)
        if self.opt.proxy_url:
            self.ledger = ProxyLedger(self.client, self.opt.proxy_url)
            try:
                self.proxy_info = await self.ledger.health()
                await self.ledger.refresh()  # start after what is already there
            except httpx.HTTPError as e:
                raise EngineUnreachable(f"the mrw backend proxy at {redact_url(self.opt.proxy_url)} does not answer ({why_unreachable(e)})") from None
            self.ledger.pool.clear()
            self.ledger.errors.clear()
            backend_len = await self._backend_max_model_len()
            if self.max_model_len is None:
                self.max_model_len = backend_len
        if self.opt.preflight:
            await self._preflight_call()

    async def _backend_max_model_len(self) -> int | None:
        """The backend's context length (vLLM's /v1/models), through the proxy: calls that
        cannot fit are refused here, because a backend error kills Parrot's engine and core."""
        try:
            r = await self.client.get(f"{self.opt.proxy_url}/v1/models", timeout=10.0)
            models = r.json().get("data") or []
        except (httpx.HTTPError, ValueError):
            return None
        models = [m for m in models if isinstance(m, dict) and (not self.opt.models or m.get("id") in self.opt.models)]
        self.served_models = [str(m.get("id")) for m in models]
        lens = [m.get("max_model_len") for m in models]
        lens = [int(x) for x in lens if isinstance(x, int)]
        return min(lens) if lens else None

    async def _preflight_call(self) -> None:
        """One 1-token call: Parrot hangs GETs forever when no engine can run a call (no
        engine registered, model_type or model mismatch), so find out now, not mid-run."""
        sid, auth = await self._open_session()
        try:
            body = {
                **auth, "func_name": "mrw_preflight", "template": "Reply with one word. {{out}}",
                "parameters": [{"name": "out", "is_output": True, "sampling_config": {"max_gen_length": 1, "ignore_tokenizer_eos": True, "temperature": 0.0}}],
                "model_type": "text", "models": list(self.opt.models), "cache_prefix": False, "output_criteria": self.opt.criteria,
            }  # fmt: skip
            info = await self._post("/v1/semantic_call", body, what="a preflight call")
            var = info["param_info"][-1]["var_id"]
            try:
                r = await self.client.request(
                    "GET", f"{self.url}/v1/semantic_var/{var}", json={**auth, "criteria": self.opt.criteria}, timeout=self.opt.preflight_timeout_s
                )
            except httpx.ReadTimeout:
                raise EngineError(
                    f"Parrot at {redact_url(self.url)} accepted a 1-token test call but did not run it within {self.opt.preflight_timeout_s:.0f} s: "
                    "no OpenAI-type engine (model_type 'text') is registered"
                    + (f" for models {self.opt.models}" if self.opt.models else "")
                    + ", or its backend does not answer; check Parrot's engine log"
                ) from None
            except httpx.HTTPError as e:
                raise EngineError(f"Parrot at {redact_url(self.url)} failed a 1-token test call ({why_unreachable(e)}): {await self._why_dead()}") from None
            if r.status_code != 200:
                raise EngineError(f"Parrot failed a 1-token test call: {parrot_message(r)}")
            if self.ledger is not None:
                rec = await self.ledger.take("Reply with one word. ", r.json()["content"])
                self._proxy_through = rec is not None
                if rec is None:
                    self._notes.add(
                        f"parrot: the preflight call did not pass the mrw backend proxy at {redact_url(self.opt.proxy_url)}: "
                        "Parrot's engine forwards elsewhere, so output lengths are not forced and token counts are missing"
                    )
                    self.capabilities = dataclasses.replace(self.capabilities, exact_output_length=False, reports_usage=False)
        finally:
            await self._close_session(sid, auth)

    async def close(self) -> None:
        if self.client is not None:
            try:
                await self.client.aclose()
            except Exception:
                pass
            self.client = None
        stack, self.stack = self.stack, None
        if stack is not None:
            try:
                self.process_cpu = stack.process_cpu()
                await asyncio.to_thread(stack.stop)
            except Exception:
                pass

    async def health(self) -> str | None:
        if self.stack is not None:
            why = self.stack.check_alive()
            if why:
                return f"part of the Parrot stack mrw launched is gone: {why}"
        try:
            async with self._client() as c:
                r = await c.request("DELETE", f"{self.url}/v1/session/-1", json={"session_id": -1, "session_auth": "1"}, timeout=5.0)
            if "ParrotError" in r.text:
                return None
            return f"Parrot's serve core at {redact_url(self.url)} answers HTTP {r.status_code}, not like Parrot"
        except httpx.HTTPError as e:
            return f"Parrot's serve core at {redact_url(self.url)} does not answer ({why_unreachable(e)}): {await self._why_dead()}"

    def log_path(self) -> Path | None:
        if self.stack is not None:
            return self.stack.run_dir / "parrot_core.log"
        return None

    def metrics_url(self) -> str | None:
        return self.backend_metrics

    def fidelity(self) -> Fidelity:
        proxied = self.capabilities.exact_output_length
        f = Fidelity(output_length_forced=proxied, input_length_checked=False, ttft_measured=False)
        f.notes.append("parrot: no streaming; TTFT and inter-token times are not measured (t_first_token is null); "
                       "a call's end is when its blocking GET returned")  # fmt: skip
        f.notes.append(
            "parrot: t_issue is when the call could start as the application sees it (submitted, and every dependency's "
            "GET answered); Parrot starts it a little earlier, as soon as the outputs it splices exist (extra.t_ready, "
            "from the backend end times); extra.t_submit is when mrw submitted it"
        )
        f.notes.append(
            "parrot: chat roles are flattened: Parrot merges a call's text into one user message, so the trace's "
            f"messages are joined with {MESSAGE_SEP!r} and the backend's chat template sees one user turn "
            "(it may add its default system prompt); input tokens are reported but differ from the recorded ones by that markup"
        )
        f.notes.append(
            "parrot: Parrot splices the live upstream outputs into downstream prompts (as --live-refs does), never the "
            "recorded ones; compare with call-level engines replayed with --live-refs"
        )
        f.notes.append(
            "parrot: calls with a recorded wait_s, or with a dependency whose output they do not splice in, are submitted "
            "client-side once their dependencies are done plus the wait (Parrot cannot express tool time or pure ordering edges)"
        )
        if proxied:
            f.notes.append(
                "parrot: exact output lengths are forced by the mrw backend proxy (ignore_eos, min_tokens) because Parrot's "
                "OpenAI-type engine drops ignore_tokenizer_eos; token counts and backend first-token times come from the proxy"
            )
        else:
            f.notes.append(
                "parrot: no mrw backend proxy, so output length is capped by max_gen_length but not forced (Parrot's "
                "OpenAI-type engine drops ignore_tokenizer_eos) and token counts are unknown"
            )
        if self.max_model_len:
            f.notes.append(
                f"parrot: calls needing more than the backend's max_model_len ({self.max_model_len}) tokens are refused by mrw "
                "before submission: a backend error ends Parrot's engine and core (fail-fast), and with them the run"
            )
        if self.process_cpu:
            cpu = ", ".join(f"{k} {v:.1f} s" for k, v in self.process_cpu.items() if v is not None)
            f.notes.append(f"parrot: CPU time of the launched Parrot-side processes over the run: {cpu} "
                           "(Parrot's engine loop polls every microsecond, so it keeps one host core busy)")  # fmt: skip
        f.notes.extend(sorted(self._notes))
        return f

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "engine": "parrot",
            "mode": "embedded" if self.stack is not None else "attached",
            "url": redact_url(self.url) if self.url else None,
            "criteria": self.opt.criteria,
            "models": self.opt.models,
            "session_per": "workflow",
            "proxy": self.ledger is not None,
            "max_model_len": self.max_model_len,
        }
        if self.served_models:
            d["model"] = self.served_models[0] if len(self.served_models) == 1 else ",".join(self.served_models)
        if self.proxy_info:
            d["backend"] = redact_url(self.proxy_info.get("backend") or "")
            d["proxy_forces_length"] = self.proxy_info.get("force_length")
        if self.stack is not None:
            launched = self.stack.describe()
            d.update({k: launched[k] for k in ("parrot_commit", "parrot", "served_model", "startup_s") if k in launched})
            d["model"] = launched.get("served_model")
            if "vllm" in launched:
                v = launched["vllm"]
                d["backend_engine"] = {k: v.get(k) for k in ("distribution", "version", "device", "launch_flags", "model_path", "tokenizer")}
                d["model_path"] = v.get("model_path")
                d["server_version"] = v.get("version")
            d["logs"] = sorted(p.name for p in self.stack.run_dir.glob("parrot_*") if p.suffix in (".log", ".jsonl"))
        return d

    # ------------------------------------------------------------------ HTTP

    async def _post(self, path: str, body: dict, *, what: str, method: str = "POST") -> dict:
        assert self.client is not None, "start() first"
        try:
            r = await self.client.request(method, f"{self.url}{path}", json=body)
        except httpx.TimeoutException:
            raise _Fatal(f"Parrot at {redact_url(self.url)} did not answer {what} within {self.opt.request_timeout_s:.0f} s", "timeout") from None
        except httpx.HTTPError as e:
            raise _Fatal(f"Parrot at {redact_url(self.url)} stopped answering ({why_unreachable(e)} on {what}): {await self._why_dead()}", "transport") from None
        if r.status_code != 200:
            raise _Fatal(f"Parrot refused {what}: {parrot_message(r)}", "parrot")
        return r.json()

    async def _why_dead(self) -> str:
        why = "Parrot's engine exits on any backend error and its serve core with it; see their logs"
        if self.ledger is not None:
            err = await self.ledger.last_error()
            if err:
                return f"its {err}; {why}"
        return why

    async def _open_session(self) -> tuple[int, dict]:
        s = await self._post("/v1/session", {"api_key": "mrw"}, what="a new session")
        sid = int(s["session_id"])
        return sid, {"session_id": sid, "session_auth": s.get("session_auth", "1")}

    async def _close_session(self, sid: int, auth: dict) -> None:
        try:
            await self.client.request("DELETE", f"{self.url}/v1/session/{sid}", json=auth, timeout=5.0)
        except Exception:
            pass  # the session expires on its own (session_life_span)

    # ------------------------------------------------------------------ replay

    async def run_workflow(self, workflow: Workflow, requests: dict[str, Request], sink: ResultSink) -> None:
        await _WorkflowRun(self, workflow, requests, sink).run()


async def _start_stack(stack: Any) -> None:
    """Start the Parrot stack (blocking: spawn + health waits with progress) off the loop; if
    interrupted, stop whatever it had started."""
    import threading

    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def target() -> None:
        try:
            stack.start()
        except BaseException as e:  # noqa: BLE001 - handed to the loop
            loop.call_soon_threadsafe(lambda err=e: fut.done() or fut.set_exception(err))
        else:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

    th = threading.Thread(target=target, name="parrot-start", daemon=True)
    th.start()
    try:
        await fut
    except asyncio.CancelledError:
        th.join(timeout=10)  # let a half-spawned child register before stopping all of them
        stack.stop()
        raise


class _WorkflowRun:
    """One workflow in one Parrot session."""

    def __init__(self, eng: ParrotEngine, wf: Workflow, requests: dict[str, Request], sink: ResultSink):
        self.eng = eng
        self.wf = wf
        self.sink = sink
        self.calls = {c.id: c for c in wf.topo_order()}
        self.reqs = requests
        self.plans = {cid: plan_call(c, requests.get(cid)) for cid, c in self.calls.items()}
        self.control = {cid: control_deps(c, self.plans[cid]) for cid, c in self.calls.items()}
        self.deferred = {cid for cid, c in self.calls.items() if c.wait_s > 0 or self.control[cid]}
        self.var_ids: dict[str, str] = {}
        self.submitted: set[str] = set()
        self.t_submit: dict[str, float] = {}
        self.t_sched: dict[str, float | None] = {}
        self.t_end: dict[str, float] = {}
        self.backend_end: dict[str, float] = {}  # run clock, from the proxy
        self.outputs: dict[str, str] = {}
        self.reported: set[str] = set()
        self.done_ev = {cid: asyncio.Event() for cid in self.calls}
        self.last_progress = time.monotonic()
        self.auth: dict = {}
        self._submit_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.refused = self._refusals()
        for sc in self.plans.values():
            if sc.dropped_sampling:
                eng._notes.add(f"parrot: sampling keys {sc.dropped_sampling} are not forwarded by Parrot's OpenAI-type engine")

    def _refusals(self) -> dict[str, str]:
        """Calls that cannot fit the backend's context, and everything downstream of them."""
        limit = self.eng.max_model_len
        out: dict[str, str] = {}
        for cid, c in self.calls.items():  # topological order
            bad = [d for d in c.deps if d in out]
            if bad:
                out[cid] = f"not issued: dependency {bad[0]} failed"
                continue
            if limit is None:
                continue
            req = self.reqs.get(cid)
            n_in = (req.expected_input_tokens if req is not None and req.expected_input_tokens else c.input_tokens) or 0
            n_out = self.plans[cid].max_gen_length
            if n_in + n_out > limit:
                out[cid] = (
                    f"refused by mrw: {n_in} input + {n_out} output tokens exceed the backend's max_model_len {limit} "
                    "(the backend would answer HTTP 400, which ends Parrot's engine and core)"
                )
        return out

    async def run(self) -> None:
        eng = self.eng
        self.t_arrival = eng.now()
        sid = None
        try:
            for cid, why in self.refused.items():
                await self._fail(cid, why, "refused")
            if len(self.refused) == len(self.calls):
                return
            sid, self.auth = await eng._open_session()
            await self._submit_batch([cid for cid in self.calls if cid not in self.deferred])
            # The liveness probe's variable: made after the first submits, not before them.
            probe = await eng._post("/v1/semantic_var", {**self.auth, "var_name": "mrw_probe"}, what="a probe variable")
            self.probe_var = probe["var_id"]
            await eng._post(f"/v1/semantic_var/{self.probe_var}", {**self.auth, "content": ""}, what="setting the probe variable")
            for cid in self.deferred - set(self.refused):
                self._spawn(self._deferred(cid))
            self._spawn(self._watchdog())
            while not all(e.is_set() or cid in self.refused for cid, e in self.done_ev.items()):
                done, _ = await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    self.tasks.discard(t)
                    if not t.cancelled() and t.exception() is not None:
                        raise t.exception()
        except _Fatal as e:
            # Reported, not raised: the replayer asks health() after a transport/timeout
            # failure and ends the run if Parrot is gone; a refusal ends this workflow only.
            for cid in self.calls:
                if cid not in self.reported:
                    await self._fail(cid, f"workflow {self.wf.id}: {e}", e.kind)
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if sid is not None:
                await eng._close_session(sid, self.auth)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        return t

    async def _submit_batch(self, seeds: list[str]) -> None:
        """Submit `seeds` plus every not-yet-submitted, non-deferred call whose inputs then all
        have variables, in dependency order; sinks of the batch carry output_criteria so that
        Parrot activates the batch's graph at once, then every output gets a blocking GET."""
        async with self._submit_lock:
            batch: list[str] = []
            have = set(self.submitted)
            for cid in self.calls:  # topological order
                if cid in have or cid in self.refused or (cid not in seeds and cid in self.deferred):
                    continue
                if all(p.ref in have for p in self.plans[cid].pieces if p.kind == "ref"):
                    batch.append(cid)
                    have.add(cid)
            in_batch = set(batch)
            feeds = {p.ref for cid in batch for p in self.plans[cid].pieces if p.kind == "ref" and p.ref in in_batch}
            for cid in batch:
                crit = self.eng.opt.criteria if cid not in feeds else None
                body = self.plans[cid].payload(self.auth, self.var_ids, models=self.eng.opt.models, criteria=crit)
                t_sent = self.eng.now()  # with output_criteria Parrot may start it before answering
                info = await self.eng._post("/v1/semantic_call", body, what=f"call {cid}")
                outs = [p for p in info["param_info"] if p["is_output"]]
                self.var_ids[cid] = outs[-1]["var_id"]
                self.t_submit[cid] = t_sent
                self.submitted.add(cid)
                self.last_progress = time.monotonic()
            for cid in batch:
                self._spawn(self._await_output(cid))

    async def _deferred(self, cid: str) -> None:
        call = self.calls[cid]
        for d in call.deps:
            await self.done_ev[d].wait()
        ready = max((self.t_end[d] for d in call.deps if d in self.t_end), default=self.t_arrival)
        self.t_sched[cid] = ready + call.wait_s
        delay = self.t_sched[cid] - self.eng.now()
        if delay > 0:
            await asyncio.sleep(delay)
        await self._submit_batch([cid])  # its spliced inputs are dependencies, all done

    async def _await_output(self, cid: str) -> None:
        eng = self.eng
        body = {**self.auth, "criteria": eng.opt.criteria}
        url = f"{eng.url}/v1/semantic_var/{self.var_ids[cid]}"
        while True:
            started = time.monotonic()
            try:
                r = await eng.client.request("GET", url, json=body, timeout=httpx.Timeout(eng.opt.stall_timeout_s, connect=5.0))
                break
            except httpx.ReadTimeout:
                if self.last_progress > started:
                    continue  # other calls progressed: this one is legitimately waiting
                raise self._stall() from None
            except httpx.HTTPError as e:
                raise _Fatal(
                    f"Parrot at {redact_url(eng.url)} stopped answering while call {cid} ran ({why_unreachable(e)}): {await eng._why_dead()}",
                    "transport",
                ) from None
        if r.status_code != 200:
            raise _Fatal(f"Parrot failed call {cid}: {parrot_message(r)}", "parrot")
        t_end = eng.now()
        self.last_progress = time.monotonic()
        content = r.json()["content"]
        self.outputs[cid] = content
        self.t_end[cid] = t_end
        # Parrot finished the dependencies first, but their GETs' answers may still be on the
        # way to us; report in dependency order, so that prompts and times are complete.
        for d in self.calls[cid].deps:
            await self.done_ev[d].wait()
        await self._report(cid, content, t_end)
        self.done_ev[cid].set()

    async def _report(self, cid: str, content: str, t_end: float) -> None:
        call, sc, req = self.calls[cid], self.plans[cid], self.reqs.get(cid)
        eng = self.eng
        rec = await eng.ledger.take(sc.prompt(self.outputs), content) if eng.ledger is not None else None
        backend: dict[str, Any] = {}
        if rec is not None:
            to_run = eng.ledger.offset - eng.t0  # proxy clock -> run clock
            backend = {
                "backend_t_start": rec["t_recv"] + to_run,
                "backend_t_first_token": rec["t_first_token"] + to_run if rec.get("t_first_token") is not None else None,
                "backend_t_end": rec["t_end"] + to_run,
                "backend_finish_reason": rec.get("finish_reason"),
            }
            self.backend_end[cid] = backend["backend_t_end"]
        # t_issue: when the application could know the call may start: submitted, and every
        # dependency's output back at the client (so t_issue >= each dependency's t_end, as for
        # a call-level engine). Parrot itself starts a call as soon as the outputs it splices
        # exist, which is a little earlier (before their GETs answer us): extra.t_ready, from
        # the dependencies' backend end times when the proxy gives them.
        deps_end = max((self.t_end[d] for d in call.deps if d in self.t_end), default=None)
        t_issue = self.t_submit[cid] if deps_end is None else max(self.t_submit[cid], deps_end)
        t_issue = min(t_issue, t_end)
        if call.deps and cid not in self.deferred and all(d in self.backend_end for d in call.deps):
            backend["t_ready"] = max(self.t_submit[cid], max(self.backend_end[d] for d in call.deps))
        t_sched = self.t_sched.get(cid)
        if t_sched is None:
            t_sched = self.t_arrival if deps_end is None else deps_end
        res = CallResult(
            call_id=cid,
            workflow_id=self.wf.id,
            node=call.node,
            ok=True,
            t_scheduled=t_sched,
            t_issue=t_issue,
            t_first_token=None,
            t_end=t_end,
            expected_input_tokens=req.expected_input_tokens if req is not None else (call.input_tokens or None),
            expected_output_tokens=sc.max_gen_length,
            output=content,
            extra={"t_submit": self.t_submit[cid], "parrot_session": self.auth["session_id"], **backend},
        )
        if eng.ledger is not None:
            if rec is None:
                res.extra["proxy_record"] = "missing"
            else:
                res.input_tokens = rec.get("prompt_tokens")
                res.output_tokens = rec.get("completion_tokens")
        self.reported.add(cid)
        await self.sink(res)

    def _stall(self) -> _Fatal:
        pending = [c for c in self.calls if c not in self.t_end and c not in self.refused]
        return _Fatal(
            f"no output came back from Parrot for {self.eng.opt.stall_timeout_s:.0f} s (pending: {', '.join(pending[:5])}"
            f"{', ...' if len(pending) > 5 else ''}): Parrot hangs GETs forever when no engine can run a call "
            "(none registered, model_type or model mismatch); check its engine, or raise --request-timeout for slow engines",
            "timeout",
        )

    async def _watchdog(self) -> None:
        """Probe the session: Parrot drops a session whose call failed (and never answers its
        GETs), and expires one not touched for session_life_span; a probe both detects the
        first and prevents the second."""
        eng = self.eng
        url = f"{eng.url}/v1/semantic_var/{self.probe_var}"
        while True:
            await asyncio.sleep(eng.opt.probe_interval_s)
            try:
                r = await eng.client.request("GET", url, json={**self.auth, "criteria": eng.opt.criteria}, timeout=10.0)
            except httpx.HTTPError as e:
                raise _Fatal(f"Parrot at {redact_url(eng.url)} stopped answering ({why_unreachable(e)}): {await eng._why_dead()}", "transport") from None
            if r.status_code != 200:
                raise _Fatal(
                    f"Parrot dropped session {self.auth['session_id']} ({parrot_message(r)}): a call failed inside Parrot; {await eng._why_dead()}",
                    "transport",
                )
            if time.monotonic() - self.last_progress > eng.opt.stall_timeout_s:
                raise self._stall()

    async def _fail(self, cid: str, error: str, kind: str) -> None:
        if cid in self.reported:
            return
        self.reported.add(cid)
        call = self.calls[cid]
        req = self.reqs.get(cid)
        res = CallResult(
            call_id=cid,
            workflow_id=self.wf.id,
            node=call.node,
            ok=False,
            t_scheduled=self.t_sched.get(cid),
            t_issue=self.t_submit.get(cid),
            t_end=self.eng.now() if cid in self.t_submit else None,
            expected_input_tokens=req.expected_input_tokens if req is not None else (call.input_tokens or None),
            expected_output_tokens=self.plans[cid].max_gen_length,
            error=error,
            extra={"error_kind": kind},
        )
        self.done_ev[cid].set()
        await self.sink(res)

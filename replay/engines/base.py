"""The one interface every engine adapter implements, and the records that cross it.

Two shapes of engine exist:
- call-level engines (vLLM, any OpenAI-compatible server) take one `Request` at a time; the
  replay scheduler decides when each call is released (deps done + recorded wait);
- workflow-level engines (Parrot) take a whole workflow at its arrival time and schedule its
  calls themselves, because seeing the graph is the point of such an engine.

An adapter declares `Capabilities`; the replayer uses what is there and records in the run
what fidelity it could not enforce (`Fidelity`), never failing silently.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar

from mrw.trace import Workflow


@dataclass(frozen=True, slots=True)
class Capabilities:
    exact_output_length: bool = False  # max_tokens = min_tokens with EOS ignored
    token_id_prompts: bool = False  # prompt as a list of token ids
    streaming: bool = False  # per-token timing: TTFT and inter-token latency are real
    whole_workflow: bool = False  # takes a workflow (graph), not single calls
    metrics_endpoint: bool = False  # Prometheus /metrics worth scraping
    prefix_caching: bool = False  # engine can reuse KV of shared prefixes
    reports_usage: bool = True  # answers carry prompt/completion token counts

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


@dataclass(slots=True)
class EngineKnobs:
    """Engine-side knobs. Applied as launch flags when mrw starts the engine; when it attaches
    to a running one (`--url`) a knob it cannot apply or verify is an error, never ignored."""

    max_num_seqs: int | None = None  # batch size
    prefix_caching: bool | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    engine_args: list[str] = field(default_factory=list)  # passed through verbatim

    def set(self) -> dict[str, Any]:
        """Only the knobs the user set (for run.json and for error messages)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


@dataclass(slots=True)
class EngineOptions:
    """What every adapter is constructed from; engine-specific settings go in `extra`."""

    url: str | None = None  # attach to a running server; None = the adapter's embedded default
    model: str | None = None  # served model name (attach) or model path/name (launch)
    knobs: EngineKnobs = field(default_factory=EngineKnobs)
    request_timeout_s: float = 600.0  # longest silence on a stream before the call fails
    connect_timeout_s: float = 10.0
    max_connections: int = 4096
    log_dir: Path | None = None  # where a launched engine writes its log (the run directory)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Request:
    """One call as the replayer sends it: prompt already rendered, lengths forced."""

    call_id: str
    workflow_id: str
    node: str
    messages: list[dict[str, str]] | None = None  # chat
    prompt: str | list[int] | None = None  # completions: text or token ids
    max_tokens: int = 16  # = recorded output tokens
    min_tokens: int | None = None  # = max_tokens when forcing exact length
    ignore_eos: bool = True
    expected_input_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, seed, ...
    keep_output: bool = False  # return the generated text (needed for --live-refs)
    # Made ahead (mrw.replay.prompts): the engine's encoding of this request (`Engine.encode`),
    # so that issuing it is only the send; messages and prompt are then dropped, and `chat`
    # says which endpoint the body is for.
    body: bytes | None = None
    chat: bool = False


@dataclass(slots=True)
class CallResult:
    """One finished (or failed) call, as written to requests.jsonl. Times are seconds since
    the run started (time.monotonic based); None where the engine cannot tell."""

    call_id: str
    workflow_id: str
    node: str
    ok: bool
    t_arrival: float | None = None  # when its workflow arrived (run time)
    t_scheduled: float | None = None  # when the replay schedule wanted it issued
    t_issue: float | None = None
    t_first_token: float | None = None
    t_end: float | None = None
    input_tokens: int | None = None  # as the engine reported them
    output_tokens: int | None = None
    expected_input_tokens: int | None = None  # as recorded in the trace
    expected_output_tokens: int | None = None
    token_times: list[float] | None = None  # arrival time of each streamed chunk with tokens
    deps: list[str] = field(default_factory=list)  # from the trace, so analysis needs no trace
    wait_s: float = 0.0  # the tool/think wait the schedule applied (scaled)
    error: str | None = None
    output: str | None = None  # kept in memory for --live-refs; not written by default
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft(self) -> float | None:
        if self.t_first_token is None or self.t_issue is None:
            return None
        return self.t_first_token - self.t_issue

    @property
    def e2e(self) -> float | None:
        if self.t_end is None or self.t_issue is None:
            return None
        return self.t_end - self.t_issue

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.t_end is None or self.t_first_token is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.t_end - self.t_first_token) / (self.output_tokens - 1)

    def to_dict(self, *, with_output: bool = False) -> dict[str, Any]:
        """The requests.jsonl record. Shallow on purpose (dataclasses.asdict deep-copies
        token_times: measurable per request at high rates)."""
        d = {k: getattr(self, k) for k in _RESULT_FIELDS}
        if with_output:
            d["output"] = self.output
        if self.extra:
            d["extra"] = self.extra
        return d


_RESULT_FIELDS = tuple(f for f in CallResult.__dataclass_fields__ if f not in ("output", "extra"))


@dataclass(slots=True)
class Fidelity:
    """What the replay could not enforce with this engine; goes into run.json."""

    output_length_forced: bool = True
    input_length_checked: bool = True
    ttft_measured: bool = True
    input_lengths: str = "natural"  # recorded | natural (mrw.replay.prompts)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Called by a workflow-level engine as each of its calls finishes.
ResultSink = Callable[[CallResult], Awaitable[None]]


class Engine(abc.ABC):
    """An engine adapter.

    Life cycle, driven by the replayer: `Engine(options)`, `await preflight()` (cheap checks
    before any run directory exists: reachable, knobs applicable), `await start()` (launch
    the engine if needed, open clients), calls or workflows, `await close()` (always, on
    every exit path; stops what start() launched).

    Times in CallResult are `self.now()`: seconds of `time.perf_counter()` since the run's
    t0, which the replayer sets (`engine.t0`) just before the first arrival; metrics.jsonl
    and the meters use the same clock.
    """

    name: ClassVar[str]
    capabilities: Capabilities  # class default; an instance may narrow or widen it from its options

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.t0 = time.perf_counter()

    @classmethod
    def from_options(cls, options: EngineOptions) -> "Engine":
        """Build the adapter from the options every engine shares (what the CLI parses).
        An adapter with its own options dataclass overrides this and maps `options.url`,
        `options.model`, `options.knobs` and `options.extra` onto it (refusing knobs it
        cannot apply with a KnobError)."""
        return cls(options)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def preflight(self) -> None:
        """Fail fast with one clear line (EngineUnreachable, KnobError, LaunchError) before a
        run directory is made. Default: nothing to check."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Launch (if embedded) and open clients; raise EngineUnreachable / LaunchError if not."""

    async def close(self) -> None:
        """Release clients and stop anything start() launched. Never raises."""

    async def health(self) -> str | None:
        """None while the engine is alive, else why not (one line). Asked after a transport
        error, so that one dropped connection is told apart from a dead engine."""
        return None

    def log_path(self) -> Path | None:
        """The engine's log file, when mrw launched it."""
        return None

    def process_id(self) -> int | None:
        """The pid of the engine process mrw launched (for process meters), else None."""
        return None

    def metrics_url(self) -> str | None:
        """A Prometheus endpoint the replayer scrapes into metrics.jsonl, if the engine has one."""
        return None

    def fidelity(self) -> Fidelity:
        """What this engine, as configured, can enforce. Adapters refine this."""
        caps = self.capabilities
        f = Fidelity(
            output_length_forced=caps.exact_output_length,
            ttft_measured=caps.streaming,
            input_length_checked=caps.reports_usage,
        )
        if not caps.exact_output_length:
            f.notes.append(f"{self.name}: output length is capped by max_tokens but not forced")
        if not caps.streaming:
            f.notes.append(f"{self.name}: no streaming, so no TTFT or inter-token times")
        return f

    def describe(self) -> dict[str, Any]:
        """Engine, version, model and host for run.json: never a credential."""
        return {"engine": self.name}

    async def warm(self, connections: int) -> None:
        """Just before t0: have `connections` ready, so that a burst due at the start does not
        wait for connections to open (later bursts find the earlier ones idle). Default: nothing."""

    def encode(self, req: Request) -> bytes | None:
        """The request's body as `run_call` would send it, made ahead of its time (set as
        `req.body`, `run_call` sends it as is). None: this engine cannot take a prebuilt body."""
        return None

    def tokenizer_endpoint(self) -> tuple[str, dict[str, str], str | None] | None:
        """(URL, headers, model) of the engine's /tokenize, where it has one (vLLM): the served
        tokenizer when its folder is not on this host. Headers stay in memory, never on disk."""
        return None

    async def run_call(self, req: Request) -> CallResult:
        """Call-level engines: issue one request and return its result (ok or not)."""
        raise NotImplementedError(f"{self.name} takes whole workflows, not single calls")

    async def run_workflow(self, workflow: Workflow, requests: dict[str, Request], sink: ResultSink) -> None:
        """Workflow-level engines: submit the whole graph, report each call through `sink`."""
        raise NotImplementedError(f"{self.name} takes single calls, not whole workflows")

"""The replay scheduler: one asyncio loop that releases workflows and calls on time.

- Workflows arrive at their recorded `arrival_s` x `time_scale`, or as a Poisson process at
  `rate` workflows/s drawn from `seed`.
- Call-level engines: a call is released when all its dependencies have finished plus its
  recorded `wait_s` x `wait_scale` (roots: workflow arrival plus their wait). The moment it
  should go out is `t_scheduled`; the engine stamps `t_issue` just before sending, so
  `t_issue - t_scheduled` is the replayer's own dispatch lateness.
- Workflow-level engines get the whole workflow (and every call's Request) at its arrival
  and report each call through a sink.
- The loop is event driven: a finished call decrements its children's pending-dependency
  counts and releases those that reach zero; nothing polls.

Every call ends with exactly one result through `sink`: finished, failed, skipped because a
dependency failed, or "not finished: <why>" when the run stops early (engine death,
Ctrl-C/SIGTERM). Deterministic load: `build_request` is the one seam where a trace Call
becomes an engine Request (output length forced, prompt rebuilt from segments, or the token
ids of its recorded length); `prompts.PromptStore` makes every call-level request (body
encoded) before it is due, so that issuing one is only the send.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from mrw.errors import NotSupportedError, TraceError
from mrw.trace import Call, Header, Trace, Workflow

from .engines.base import CallResult, Capabilities, Engine, Request
from .prompts import PromptStore, resolve_mode
from .timer import DeadlineTimer

# Call-level engines: how long before a workflow's arrival its first requests are taken from
# the prompt store (built long before: prompts.PromptStore) and their tasks started, so that
# the issue at the deadline is only the send.
PREPARE_AHEAD_S = 0.002

# Sampling fields the replayer owns (forced length, streaming) or that would change the
# response count; everything else recorded (temperature, top_p, seed, ...) is sent as is.
_OWNED_FIELDS = frozenset(
    {"max_tokens", "max_completion_tokens", "min_tokens", "ignore_eos", "stream", "stream_options", "n", "best_of", "model", "messages", "prompt"}
)


@dataclass(slots=True)
class ReplayOptions:
    time_scale: float = 1.0  # multiplies recorded arrival offsets (0.5: twice the load; 0: all at once)
    wait_scale: float = 1.0  # multiplies recorded tool/think waits (0: no waits)
    rate: float | None = None  # Poisson arrivals, workflows per second (replaces recorded offsets)
    seed: int = 0
    live_refs: bool = False  # splice the live upstream output instead of the recorded one
    force_output_length: bool = True  # max_tokens = min_tokens = recorded, ignore_eos
    max_workflows: int | None = None  # replay only the first N workflows (in trace order)
    save_outputs: bool = False  # keep generated text in requests.jsonl
    token_times: bool = True  # keep per-chunk arrival times in requests.jsonl
    input_lengths: str | None = None  # recorded | natural; None: recorded where the engine can (mrw.replay.prompts)
    tokenizer: str | None = None  # the served model's tokenizer folder, when the engine's is not on this host
    trace_tokenizer: str | None = None  # the folder of the tokenizer the trace's counts are in
    prompt_memory_mb: float | None = None  # budget for request bodies built ahead (default: 1/4 of free memory, <= 4 GiB)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


class EngineDied(Exception):
    """The engine stopped answering mid-run; the message is the one line to print."""


# ---------------------------------------------------------------------------- planning


def select_workflows(trace: Trace, opts: ReplayOptions) -> list[Workflow]:
    wfs = trace.workflows
    return wfs[: opts.max_workflows] if opts.max_workflows is not None else list(wfs)


def arrival_times(workflows: list[Workflow], opts: ReplayOptions) -> list[float]:
    """Run-time arrival of each workflow (same order as `workflows`)."""
    if opts.rate is not None:
        if opts.rate <= 0:
            raise ValueError("--rate must be > 0")
        rng = random.Random(opts.seed)
        t, out = 0.0, []
        for i in range(len(workflows)):
            out.append(t)  # the first workflow at t=0, then exponential gaps
            t += rng.expovariate(opts.rate)
        return out
    if not workflows:
        return []
    base = min(w.arrival_s for w in workflows)
    return [(w.arrival_s - base) * opts.time_scale for w in workflows]


def synth_prompt(call: Call, header: Header, tokenizer: Any = None) -> list[int]:
    """Token ids for a call recorded without text (anonymised: hash_ids only).

    The seam to `mrw.synth`: block hashes become token ids that reproduce the trace's prefix
    sharing, drawn from the served model's vocabulary when its tokenizer is at hand."""
    try:
        from mrw import synth
    except ImportError:
        raise NotSupportedError(
            f"call {call.id} has no text (an anonymised trace with hash_ids only); replaying it needs "
            "token-id prompts from mrw.synth, which this mrw does not have"
        ) from None
    return synth.prompt_token_ids(call, header, tokenizer)


def build_request(
    call: Call,
    workflow_id: str,
    outputs: Mapping[str, str],
    header: Header,
    opts: ReplayOptions,
    tokenizer: Any = None,
    *,
    prompt: str | list[int] | None = None,
) -> Request:
    """The one place a trace Call becomes a Request: prompt rebuilt (or `prompt` as given: the
    token ids of its recorded length), output length forced."""
    messages = None
    if prompt is None:
        if call.messages is not None:
            messages = call.render_messages(outputs)
        elif call.prompt is not None:
            prompt = call.render_prompt(outputs)
        else:
            prompt = synth_prompt(call, header, tokenizer)
    sampling = {k: v for k, v in call.sampling.items() if k not in _OWNED_FIELDS}
    n = max(1, call.output_tokens)
    if opts.force_output_length:
        sampling.pop("stop", None)  # a stop string would cut the forced length short
        sampling.pop("stop_token_ids", None)
    return Request(
        call_id=call.id,
        workflow_id=workflow_id,
        node=call.node,
        messages=messages,
        prompt=prompt,
        max_tokens=n,
        min_tokens=n if opts.force_output_length else None,
        ignore_eos=opts.force_output_length,
        expected_input_tokens=call.input_tokens or None,
        sampling=sampling,
        keep_output=opts.live_refs or opts.save_outputs,
    )


def check_feasible(trace: Trace, workflows: list[Workflow], caps: Capabilities, opts: ReplayOptions) -> list[str]:
    """Refuse, before anything starts, what cannot be replayed (an input-length mode the engine
    cannot take included: `prompts.resolve_mode`); return fidelity notes."""
    _, notes = resolve_mode(opts.input_lengths, caps, opts.live_refs)
    recorded = trace.recorded_outputs()
    textless = 0
    for w in workflows:
        for c in w.calls:
            if not c.has_text:
                textless += 1  # hash_ids, or a count only (an import such as Azure): unique prompts
            elif not opts.live_refs:
                for r in c.refs():
                    if r not in recorded:
                        raise TraceError(
                            f"call {c.id} splices the output of {r}, which the trace did not record; replay with --live-refs"
                        )
    if textless:
        if not caps.token_id_prompts:
            raise NotSupportedError(f"{textless} call(s) have no text (hash_ids or token counts only) and this engine "
                                    "cannot take token-id prompts; a server whose /v1/completions takes them (vLLM, SGLang): "
                                    "--openai-supports token_ids")
        first = next(c for w in workflows for c in w.calls if not c.has_text)
        synth_prompt(first, trace.header)  # raises the one clear error if it cannot work
        notes.append(f"{textless} text-free call(s) replayed with synthetic token-id prompts of their recorded lengths "
                     "(mrw.synth: from their hash_ids; unique where a call has none)")
    if opts.live_refs:
        notes.append("--live-refs: prompts splice live upstream outputs, so input token counts may differ from the trace")
    return notes


# ---------------------------------------------------------------------------- token check


@dataclass(slots=True)
class TokenCheck:
    """Responses whose token counts differ from the trace (count + a few examples)."""

    checked: int = 0
    output_mismatch: int = 0
    input_mismatch: int = 0
    unreported: int = 0  # ok responses without token counts
    output_examples: list[dict] = field(default_factory=list)
    input_examples: list[dict] = field(default_factory=list)
    max_examples: int = 5

    def add(self, r: CallResult) -> None:
        if not r.ok:
            return
        self.checked += 1
        if r.output_tokens is None:
            self.unreported += 1
        elif r.expected_output_tokens is not None and r.output_tokens != r.expected_output_tokens:
            self.output_mismatch += 1
            if len(self.output_examples) < self.max_examples:
                self.output_examples.append({"call_id": r.call_id, "expected": r.expected_output_tokens, "got": r.output_tokens})
        if r.input_tokens is not None and r.expected_input_tokens is not None and r.input_tokens != r.expected_input_tokens:
            self.input_mismatch += 1
            if len(self.input_examples) < self.max_examples:
                self.input_examples.append({"call_id": r.call_id, "expected": r.expected_input_tokens, "got": r.input_tokens})

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "output_mismatch": self.output_mismatch,
            "input_mismatch": self.input_mismatch,
            "unreported": self.unreported,
            "output_examples": self.output_examples,
            "input_examples": self.input_examples,
        }


# ---------------------------------------------------------------------------- scheduler


Sink = Callable[[CallResult], None]


@dataclass(slots=True)
class _Node:
    call: Call
    wf: Workflow
    children: list[str]
    pending: int
    wait: float


class Scheduler:
    """Replays `workflows` against `engine`; `sink` receives every call's result once."""

    def __init__(self, trace: Trace, workflows: list[Workflow], engine: Engine, sink: Sink, opts: ReplayOptions,
                 tokenizer: Any = None, prompts: PromptStore | None = None):
        self.tokenizer = tokenizer  # for synthetic prompts of text-free calls (a tokenizer or a synth.Vocab)
        self.prompts = prompts  # call-level requests built ahead (None: each built when released)
        self.trace = trace
        self.workflows = workflows
        self.engine = engine
        self.sink = sink
        self.opts = opts
        self.whole_workflow = engine.capabilities.whole_workflow
        self.outputs: dict[str, str] = {} if opts.live_refs else trace.recorded_outputs()
        self.nodes: dict[str, _Node] = {}
        for w in workflows:
            for c in w.calls:
                self.nodes[c.id] = _Node(c, w, [], len(c.deps), c.wait_s * opts.wait_scale)
        for n in self.nodes.values():
            for d in n.call.deps:
                self.nodes[d].children.append(n.call.id)
        self.total = len(self.nodes)
        self.results: dict[str, CallResult] = {}
        self.arrived: dict[str, float] = {}
        self.issued: dict[str, float] = {}  # call id -> t_scheduled of calls handed to the engine
        self.failed = 0
        self.check = TokenCheck()
        self.stop_reason: str | None = None
        self.engine_dead: str | None = None
        self.crash: BaseException | None = None  # an exception inside a call's task
        self._tasks: set[asyncio.Task] = set()
        self._done: asyncio.Future | None = None
        self._health: asyncio.Task | None = None
        self._arrivals: list[float] = arrival_times(workflows, opts)

    @property
    def finished(self) -> int:
        return len(self.results)

    def now(self) -> float:
        return time.perf_counter() - self.engine.t0

    # -- running

    async def run(self) -> None:
        """Replay everything; returns when every call has a result or the run was stopped.
        Raises EngineDied (after marking the unfinished calls) if the engine died."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        if self.total == 0:
            return
        self._timer = DeadlineTimer(loop)
        arrivals = loop.create_task(self._arrive_all(), name="arrivals")
        window = None
        if self.prompts is not None and self.prompts.pending and not self.whole_workflow:
            window = loop.create_task(self.prompts.fill(self.now, self._timer), name="prompts")
        try:
            await self._done
        finally:
            arrivals.cancel()
            if window is not None:
                window.cancel()
            await self._cancel_all()
            self._timer.close()
            if self.stop_reason is not None:
                self._mark_unfinished(self.stop_reason)
        if self.engine_dead is not None:
            raise EngineDied(self.engine_dead)

    def stop(self, reason: str) -> None:
        """Stop issuing, cancel what is in flight, mark the rest "not finished: reason"."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _cancel_all(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._health is not None and not self._health.done():
            self._health.cancel()

    def _spawn(self, coro: Awaitable, name: str) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Task) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None and self.stop_reason is None:
            # A bug in an adapter or here: stop cleanly, keep what was measured, say what broke.
            exc = t.exception()
            self.crash = exc
            self.stop(f"replayer error: {type(exc).__name__}: {exc}")

    async def _arrive_all(self) -> None:
        """Call-level engines: each workflow is taken in PREPARE_AHEAD_S before its arrival, so
        its first requests are rendered before their deadline, then sent exactly at it.
        Workflow-level engines get the workflow at its arrival."""
        order = sorted(range(len(self.workflows)), key=lambda i: self._arrivals[i])
        ahead = 0.0 if self.whole_workflow else PREPARE_AHEAD_S
        t0 = self.engine.t0
        for i in order:
            t = self._arrivals[i] - ahead
            if t - self.now() > 0:
                await self._timer.wait_until(t0 + t)
            if self.stop_reason is not None:
                return
            self._arrive(self.workflows[i], self._arrivals[i])

    def _arrive(self, w: Workflow, t_arrival: float) -> None:
        self.arrived[w.id] = t_arrival
        if self.whole_workflow:
            self._spawn(self._run_workflow(w, t_arrival), f"wf-{w.id}")
            return
        for c in w.calls:
            if not c.deps:
                n = self.nodes[c.id]
                self._release(n, t_arrival + n.wait)

    # -- call-level engines

    def _release(self, n: _Node, t_sched: float) -> None:
        self.issued[n.call.id] = t_sched
        self._spawn(self._issue(n, t_sched), n.call.id)

    async def _issue(self, n: _Node, t_sched: float) -> None:
        c = n.call
        req = self.prompts.take(c, n.wf.id, self.outputs) if self.prompts is not None else None
        if req is None:
            req = build_request(c, n.wf.id, self.outputs, self.trace.header, self.opts, self.tokenizer)
        if t_sched - self.now() > 0:
            await self._timer.wait_until(self.engine.t0 + t_sched)
        if self.stop_reason is not None:
            return
        res = await self.engine.run_call(req)
        if not res.ok and res.extra.get("error_kind") in ("transport", "timeout"):
            dead = await self._engine_health()
            if dead is not None:
                self._engine_died(dead)  # first: so that this failure does not skip dependents
                res.error = f"not finished: engine died: {dead} (this call: {res.error})"
                self._complete(res, n, t_sched)
                return
        self._complete(res, n, t_sched)

    def _complete(self, res: CallResult, n: _Node, t_sched: float | None) -> None:
        c = n.call
        if c.id in self.results:
            return
        res.t_scheduled = t_sched if res.t_scheduled is None else res.t_scheduled
        res.t_arrival = self.arrived.get(n.wf.id)
        res.deps = c.deps
        res.wait_s = n.wait
        if res.expected_output_tokens is None:
            res.expected_output_tokens = c.output_tokens
        if res.expected_input_tokens is None and c.input_tokens:
            res.expected_input_tokens = c.input_tokens
        if not self.opts.token_times:
            res.token_times = None
        self.results[c.id] = res
        if not res.ok:
            self.failed += 1
        self.check.add(res)
        if res.ok and self.opts.live_refs and res.output is not None:
            self.outputs[c.id] = res.output
        self.sink(res)
        # On disk now: drop the bulky parts (a long run would otherwise hold every token time).
        res.token_times = None
        res.output = None
        if not res.ok and self.stop_reason is None:
            self._skip_descendants(n, f"not issued: dependency {c.id} failed")
        elif not self.whole_workflow and self.stop_reason is None:
            for cid in n.children:
                ch = self.nodes[cid]
                ch.pending -= 1
                if ch.pending == 0 and cid not in self.results:
                    base = max(self.results[d].t_end or 0.0 for d in ch.call.deps)
                    self._release(ch, base + ch.wait)
        if len(self.results) == self.total and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _skip_descendants(self, n: _Node, why: str) -> None:
        stack = list(n.children)
        while stack:
            cid = stack.pop()
            if cid in self.results or cid in self.issued:
                continue
            ch = self.nodes[cid]
            self.results[cid] = r = self._unfinished(ch, why)
            self.failed += 1
            self.sink(r)
            stack.extend(ch.children)

    # -- workflow-level engines

    async def _run_workflow(self, w: Workflow, t_arrival: float) -> None:
        reqs = {c.id: build_request(c, w.id, self.outputs, self.trace.header, self.opts, self.tokenizer) for c in w.calls}
        for c in w.calls:
            self.issued[c.id] = t_arrival

        async def sink(res: CallResult) -> None:
            n = self.nodes.get(res.call_id)
            if n is None or n.wf.id != w.id:
                raise RuntimeError(f"engine {self.engine.name} reported unknown call {res.call_id!r} for workflow {w.id}")
            if not res.ok and res.extra.get("error_kind") in ("transport", "timeout"):
                dead = await self._engine_health()
                if dead is not None:
                    self._engine_died(dead)
                    res.error = f"not finished: engine died: {dead} (this call: {res.error})"
                    self._complete(res, n, None)
                    return
            self._complete(res, n, None)

        await self.engine.run_workflow(w, reqs, sink)
        # Calls the engine never reported are failures of the engine, not silently dropped.
        for c in w.calls:
            if c.id not in self.results and self.stop_reason is None:
                n = self.nodes[c.id]
                self._complete(self._unfinished(n, f"engine {self.engine.name} returned no result for this call"), n, None)

    # -- engine health

    async def _engine_health(self) -> str | None:
        """One health check shared by every call that failed at the same moment."""
        if self.engine_dead is not None:
            return self.engine_dead
        if self._health is None or self._health.done():
            self._health = asyncio.ensure_future(self.engine.health())
        try:
            return await asyncio.shield(self._health)
        except Exception as e:  # the check itself broke: treat as dead, say why
            return f"engine health check failed ({type(e).__name__}: {e})"

    def _engine_died(self, why: str) -> None:
        if self.engine_dead is None:
            self.engine_dead = why
        self.stop(f"engine died: {why}")

    # -- the end

    def _unfinished(self, n: _Node, why: str) -> CallResult:
        c = n.call
        return CallResult(
            call_id=c.id,
            workflow_id=n.wf.id,
            node=c.node,
            ok=False,
            t_arrival=self.arrived.get(n.wf.id),
            t_scheduled=self.issued.get(c.id),
            expected_input_tokens=c.input_tokens or None,
            expected_output_tokens=c.output_tokens,
            deps=c.deps,
            wait_s=n.wait,
            error=why,
        )

    def _mark_unfinished(self, reason: str) -> None:
        """Every call without a result gets one: 'not finished: <reason>' (in flight or not)."""
        for cid, n in self.nodes.items():
            if cid in self.results:
                continue
            r = self._unfinished(n, f"not finished: {reason}")
            if cid in self.issued:
                r.extra["was"] = "in flight" if self.issued[cid] <= self.now() else "scheduled"
            else:
                r.extra["was"] = "not released"
            self.results[cid] = r
            self.failed += 1
            self.sink(r)

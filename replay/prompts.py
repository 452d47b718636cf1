"""What each call's prompt is at replay, and every request body built before it is due.

**Input lengths** (`--input-lengths`; the run records the mode in run.json `prompts` and in
`fidelity.input_lengths`):

- `recorded`: every call's prompt is exactly its recorded `input_tokens` in the *served*
  model's tokenizer, chat template included, and calls that shared a prefix of N tokens at
  recording share N tokens at replay. The default wherever the engine takes token-id
  prompts: a trace is shared so that others replay *its* workload, and a prompt that grows
  or shrinks with the served tokenizer is another workload (docs/sharing.md).
- `natural`: the recorded text as it is; each prompt's length is what the served tokenizer
  makes of it. The only mode for engines that build prompts themselves (Parrot) or take
  text only, and for `--live-refs` (the live outputs are text).

How a recorded-length prompt is made, per trace:
1. Text calls whose recorded text already has the recorded count in the served tokenizer
   (every one of them is counted, as the engine counts: chat template and generation prompt)
   are sent as text: same tokenizer, nothing to change.
2. Otherwise every counted text call becomes a token-id prompt of exactly `input_tokens`
   ids. The sharing structure comes from the recorded text: the prompts, tokenised with the
   trace's own tokenizer when this host has it (exact token prefixes), else compared by
   characters (shared lengths estimated at each pair's characters per token), are sorted;
   each prompt shares with its sorted predecessor exactly their common prefix, and the rest
   is its own. Sorted neighbours give every pair's common prefix (it is the minimum over
   the neighbours between them), so copying the neighbour's first L ids and drawing the
   rest from a seed of the call's own reproduces every pairwise shared length, up to the
   chance (about 1 in the vocabulary size) that a call's first own id equals the id it
   diverges from.
3. Calls without text are built from their hash_ids (`mrw.synth`); calls with neither text
   nor hash_ids (count-only imports such as Azure) from seeds of their own: unique prompts.
Token ids are drawn from the served vocabulary: the model folder's tokenizer when it is on
this host, else the ids the engine's `/tokenize` gives ordinary text (vLLM), else recorded
lengths are refused for text traces (one line saying so).

**Built ahead.** A replay that renders a 130k-token prompt when it is due sends it 10-20 ms
late, and the tenth call of a burst later still. So every request body (the engine's own
encoding, `Engine.encode`) is built before t0 when all of them fit the memory budget; for
larger traces, those due first, and the rest by a look-ahead window during the run that
builds in slices of well under a millisecond on the event loop, never when a deadline is
near, bounded by the budget and by a time horizon. A body the window did not reach in time
is built when it is due and counted (`prompts.built_at_issue`). `--live-refs` prompts are
built with a hole where each upstream output goes; filling it when the dependency ends is
one join of bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import orjson

from mrw import synth
from mrw.errors import MrwError, NotSupportedError
from mrw.trace import Call, Trace, Workflow

from .engines.base import Capabilities, Engine, Request

INPUT_LENGTHS = ("recorded", "natural")
CHUNK_IDS = 2048  # ids drawn and serialised per slice of the look-ahead window (~0.2-0.4 ms)
SLICE_GUARD_S = 0.001  # no slice starts this close to a known deadline
HORIZON_S = 30.0  # the window builds calls estimated due within this many seconds
MAX_BUDGET = 4 << 30


class PromptError(MrwError):
    """Prompts of the asked kind cannot be built for this trace and engine."""


# ---------------------------------------------------------------------------- the mode


def resolve_mode(asked: str | None, caps: Capabilities, live_refs: bool) -> tuple[str, list[str]]:
    """(the mode this replay uses, fidelity notes). `asked` None is the default: recorded
    where the engine takes token-id prompts, else natural, and the notes say why."""
    if asked not in (None, *INPUT_LENGTHS):
        raise PromptError(f"--input-lengths {asked}: choose {' or '.join(INPUT_LENGTHS)}")
    if asked == "natural":
        return "natural", []
    why = None
    if caps.whole_workflow:
        why = "the engine builds every prompt from the workflow's text itself"
    elif not caps.token_id_prompts:
        why = "the engine takes no token-id prompts (vLLM does; a generic server with --openai-supports token_ids)"
    elif live_refs:
        why = "--live-refs splices the live output text"
    if why is None:
        return "recorded", []
    if asked == "recorded":
        raise NotSupportedError(f"--input-lengths recorded: {why}; replay with --input-lengths natural")
    return "natural", [f"input lengths natural, not recorded ({why}): each prompt's length follows the served tokenizer"]


# ---------------------------------------------------------------------------- tokenizers


@dataclass
class Served:
    """The served model's tokenizer, as far as this host reaches it."""

    source: str  # for run.json: where it came from
    vocab: synth.Vocab
    count: Callable[[Call, Mapping[str, str]], int]  # a call's input tokens, as the engine counts them
    parallel: int = 1  # counts asked at once (an engine answers several; a local tokenizer holds the GIL)
    close: Callable[[], None] = lambda: None

    def first_mismatch(self, calls: list[Call], outputs: Mapping[str, str]) -> tuple[Call, int] | None:
        """The first call (in order) whose count is not its recorded `input_tokens`, with its count."""
        from concurrent.futures import ThreadPoolExecutor

        step = max(1, 8 * self.parallel)
        with ThreadPoolExecutor(self.parallel) as pool:
            for i in range(0, len(calls), step):
                chunk = calls[i:i + step]
                for c, got in zip(chunk, pool.map(lambda c: self.count(c, outputs), chunk)):
                    if got != c.input_tokens:
                        return c, got
        return None


def _local_tokenizer(path: Any) -> Any:
    from mrw.anonymize import load_tokenizer

    tok = load_tokenizer(path)
    tok.model_max_length = 1 << 30  # counting long prompts, not feeding a model
    return tok


def local_served(path: Any) -> Served:
    from mrw.anonymize import prompt_token_ids

    tok = _local_tokenizer(path)
    return Served(f"the model folder {path}", synth.Vocab.from_tokenizer(tok),
                  lambda call, outputs: len(prompt_token_ids(call, outputs, tok)))


_CORPUS_CHARS = 200_000  # ordinary text whose ids make the vocabulary when only /tokenize is reachable


def engine_served(url: str, headers: dict[str, str], model: str | None, timeout: float = 30.0) -> Served | None:
    """The engine's /tokenize (vLLM): counts as the engine counts, and a vocabulary of the ids
    it gives ordinary text (the standard library's docstrings). None if it does not answer."""
    import httpx

    from mrw.models import local_corpus

    client = httpx.Client(timeout=timeout, headers=headers, trust_env=False)

    def post(body: dict) -> dict:
        r = client.post(url, json={"model": model, **body} if model else body)
        r.raise_for_status()
        return r.json()

    text, size = [], 0
    for t in local_corpus():
        text.append(t)
        size += len(t)
        if size >= _CORPUS_CHARS:
            break
    try:
        ids = post({"prompt": "\n".join(text), "add_special_tokens": False}).get("tokens") or []
    except (httpx.HTTPError, ValueError):
        client.close()
        return None
    if not ids:
        client.close()
        return None

    def count(call: Call, outputs: Mapping[str, str]) -> int:
        if call.messages is not None:
            d = post({"messages": call.render_messages(outputs), "add_generation_prompt": True})
        else:
            d = post({"prompt": call.render_prompt(outputs), "add_special_tokens": True})
        return int(d["count"])

    return Served(f"the engine's {url.rsplit('/', 1)[-1]} ({len(set(ids))} ordinary ids seen)", synth.Vocab.of_ids(ids), count,
                  parallel=8, close=client.close)


def resolve_served(model_dir: Any, engine: Engine) -> Served | None:
    """The model folder's tokenizer when it is on this host, else the engine's, else None."""
    from pathlib import Path

    if model_dir and (Path(model_dir) / "tokenizer_config.json").exists():
        return local_served(model_dir)
    ep = engine.tokenizer_endpoint()
    if ep is not None:
        url, headers, model = ep
        return engine_served(url, headers, model)
    return None


def trace_tokenizer(trace: Trace, given: Any) -> tuple[Any, str | None]:
    """(the tokenizer the trace's counts are in, its name) when this host has it, else (None, None)."""
    from mrw.models import local_tokenizer_dir

    if given:
        return _local_tokenizer(given), str(given)
    name = (trace.header.recorded_against or {}).get("tokenizer")
    d = local_tokenizer_dir(name)
    if d is None:
        return None, None
    return _local_tokenizer(d), str(name)


# ---------------------------------------------------------------------------- sharing


def _lcp(a: Any, b: Any) -> int:
    """Length of the common prefix of two str or bytes (slices compare in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _own_seed(call: Call) -> int:
    h = hashlib.blake2b(f"mrw-lengths|{call.id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") | (1 << 63)


def _cut(runs: list[synth.Run], n: int) -> list[synth.Run]:
    out: list[synth.Run] = []
    for seed, k in runs:
        if n <= 0:
            break
        out.append((seed, min(k, n)))
        n -= k
    return out


@dataclass
class Sharing:
    runs: dict[str, list[synth.Run]]
    basis: str
    shared_tokens: int  # sum over calls of the prefix shared with their sorted neighbour
    count_mismatches: int = 0  # calls whose trace-tokenizer count is not the recorded one


def sharing_runs(calls: list[Call], outputs: Mapping[str, str], tokenizer: Any = None, name: str | None = None) -> Sharing:
    """Token-id recipes of exactly `input_tokens` each that share what the recorded prompts
    shared (see the module docstring). With the trace's tokenizer the shared lengths are its
    token counts; without, each pair's common characters at the pair's characters per token."""
    from array import array

    if tokenizer is not None:
        from mrw.anonymize import prompt_token_ids

        seqs = []
        mism = 0
        for c in calls:
            ids = prompt_token_ids(c, outputs, tokenizer)
            mism += len(ids) != c.input_tokens
            seqs.append(array("i", ids).tobytes())  # byte order groups shared token prefixes as well
        unit = 4
        basis = f"the trace's tokenizer ({name}): exact token prefixes"
    else:
        seqs = [c.render_prompt(outputs) for c in calls]
        unit = 0
        mism = 0
        basis = "the recorded text's common characters, at each pair's characters per token (estimated: pass --trace-tokenizer DIR for exact token prefixes)"
    order = sorted(range(len(calls)), key=seqs.__getitem__)
    runs: dict[str, list[synth.Run]] = {}
    prev: int | None = None
    prev_runs: list[synth.Run] = []
    shared = 0
    for i in order:
        c = calls[i]
        n = c.input_tokens
        shared_n = 0
        if prev is not None:
            common = _lcp(seqs[prev], seqs[i])
            p = calls[prev]
            if unit:
                shared_n = common // unit
            elif common:
                chars = len(seqs[prev]) + len(seqs[i])
                shared_n = round(common * (p.input_tokens + n) / chars) if chars else 0
            shared_n = min(shared_n, n, p.input_tokens)
        mine = _cut(prev_runs, shared_n)
        if n > shared_n:
            mine.append((_own_seed(c), n - shared_n))
        runs[c.id] = mine
        shared += shared_n
        prev, prev_runs = i, mine
    return Sharing(runs, basis, shared, mism)


# ---------------------------------------------------------------------------- the plan


@dataclass
class PromptPlan:
    """What every call sends: its text, or token ids from a run list (`token_runs`)."""

    mode: str
    vocab: synth.Vocab | None = None
    block_size: int = 16
    runs: dict[str, list[synth.Run]] = field(default_factory=dict)  # text calls rebuilt as token ids
    info: dict[str, Any] = field(default_factory=dict)  # run.json `prompts`
    notes: list[str] = field(default_factory=list)  # fidelity notes

    def token_runs(self, call: Call) -> list[synth.Run] | None:
        """The call's token-id recipe; None when it sends its text."""
        r = self.runs.get(call.id)
        if r is not None:
            return r
        if not call.has_text:
            return synth.block_runs(call, self.block_size)
        return None


def make_plan(trace: Trace, workflows: list[Workflow], mode: str, *, served: Callable[[], Served | None],
              trace_tokenizer_dir: Any = None, log: Callable[[str], None] | None = None) -> PromptPlan:
    """Decide, before the run, what each call sends (module docstring). `served` is asked
    only when something needs the served tokenizer."""
    calls = [c for w in workflows for c in w.calls]
    outputs = trace.recorded_outputs()
    textless = sum(1 for c in calls if not c.has_text)
    counted = [c for c in calls if c.has_text and c.input_tokens > 0]
    plan = PromptPlan(mode, block_size=trace.header.block_size or 16)
    info: dict[str, Any] = {"input_lengths": mode}
    tok: Served | None = None
    if textless or (mode == "recorded" and counted):
        tok = served()
    try:
        return _decide(plan, info, calls, outputs, textless, counted, tok, trace, trace_tokenizer_dir, log)
    finally:
        if tok is not None:
            tok.close()


def _decide(plan: PromptPlan, info: dict[str, Any], calls: list[Call], outputs: Mapping[str, str], textless: int,
            counted: list[Call], tok: Served | None, trace: Trace, trace_tokenizer_dir: Any,
            log: Callable[[str], None] | None) -> PromptPlan:
    mode = plan.mode
    if tok is not None:
        plan.vocab = tok.vocab
        info["served_tokenizer"] = tok.source
    elif textless:
        plan.vocab = synth.FALLBACK_VOCAB
        plan.notes.append(
            "text-free calls: token ids drawn from mrw.synth's fallback vocabulary (the served model's tokenizer is not "
            "on this host and the engine serves no /tokenize); prefix sharing is reproduced, token identities are not the model's"
        )
    n_text = n_ids = 0
    if mode == "recorded" and counted:
        if tok is None:
            raise PromptError(
                "--input-lengths recorded: the served model's tokenizer is not reachable (its folder is not on this host: "
                "pass --tokenizer DIR; and the engine serves no /tokenize); replay with --input-lengths natural"
            )
        bad = tok.first_mismatch(counted, outputs)
        if bad is None:
            n_text = len(counted)
            info["sent_as_text"] = "the recorded text has every recorded input count in the served tokenizer"
        else:
            c, got = bad
            tt, tt_name = trace_tokenizer(trace, trace_tokenizer_dir)
            if log:
                log(f"prompts: call {c.id} counts {got} tokens in the served tokenizer, recorded {c.input_tokens}: "
                    f"rebuilding {len(counted)} prompts as token ids of their recorded lengths")
            sh = sharing_runs(counted, outputs, tt, tt_name)
            plan.runs = sh.runs
            n_ids = len(counted)
            info["rebuilt_because"] = f"call {c.id}: {got} tokens in the served tokenizer, {c.input_tokens} recorded"
            info["sharing"] = sh.basis
            info["shared_prefix_tokens"] = sh.shared_tokens
            plan.notes.append(
                f"{n_ids} text prompt(s) sent as token ids of exactly their recorded lengths (the served tokenizer counts "
                f"the recorded text differently); prefix sharing from {sh.basis}"
            )
            if sh.count_mismatches:
                plan.notes.append(f"the trace's tokenizer ({tt_name}) counts {sh.count_mismatches} prompt(s) other than recorded: "
                                  "their shared lengths are clamped to the recorded counts")
    elif counted:
        n_text = len(counted)
    uncounted = sum(1 for c in calls if c.has_text and c.input_tokens == 0)
    if uncounted:
        n_text += uncounted
        if mode == "recorded":
            plan.notes.append(f"{uncounted} call(s) carry no recorded input count: sent as their recorded text")
    info["calls"] = {"text": n_text, "token_ids": n_ids + textless}
    plan.info = info
    return plan


# ---------------------------------------------------------------------------- built ahead


_HOLE = "\x00mrw-hole-{}\x00"  # a placeholder string; orjson writes \x00 as \\u0000


def _hole_json(k: int) -> bytes:
    return orjson.dumps(_HOLE.format(k))[1:-1]


@dataclass(slots=True)
class _Ready:
    req: Request  # body set, prompt and messages dropped
    parts: list[bytes] | None = None  # --live-refs: body pieces between the holes
    refs: list[str] | None = None  # the upstream call whose output fills each hole


class PromptStore:
    """Every call's request, body encoded by the engine, made before it is due (module
    docstring). `take` hands a call's request over at issue time."""

    def __init__(self, trace: Trace, workflows: list[Workflow], plan: PromptPlan, engine: Engine, opts: Any,
                 outputs: Mapping[str, str], arrivals: list[float], budget_bytes: int | None = None,
                 horizon_s: float = HORIZON_S):
        self.trace, self.plan, self.engine, self.opts = trace, plan, engine, opts
        self.outputs = outputs
        self.budget = budget_bytes if budget_bytes is not None else default_budget()
        self.horizon = horizon_s
        self.ready: dict[str, _Ready] = {}
        self.done: set[str] = set()  # built (and maybe taken) or taken unbuilt
        self.bytes = 0
        self.peak_bytes = 0
        self.built_ahead = 0
        self.built_at_issue = 0
        self.build_s = 0.0
        self._room: asyncio.Event | None = None
        self.order, self.due = _due_order(workflows, arrivals, opts.wait_scale)
        self._pos = 0
        self.enabled = engine.encode(Request("probe", "probe", "probe", prompt="x")) is not None

    # -- what it costs

    def estimate(self, call: Call) -> int:
        runs = self.plan.token_runs(call)
        if runs is not None:
            return 7 * sum(n for _, n in runs) + 512
        return 2 * sum(len(s.get("text") or self.outputs.get(s.get("ref", ""), "")) for s in call.segments()) + 512

    @property
    def pending(self) -> bool:
        return self.enabled and self._pos < len(self.order)

    # -- building

    def _build(self, call: Call, wf_id: str) -> Iterator[None]:
        """Build one call's request; yields between slices (the window's pauses)."""
        from .scheduler import build_request

        runs = self.plan.token_runs(call)
        live = self.opts.live_refs and runs is None and bool(call.refs())
        if runs is not None:
            req = build_request(call, wf_id, self.outputs, self.trace.header, self.opts, prompt=_HOLE.format(0))
            body = self.engine.encode(req)
            head, tail = _split(body, b'"' + _hole_json(0) + b'"', 1)
            pieces = [head, b"["]
            first = True
            for chunk in synth.iter_ids(runs, self.plan.vocab or synth.FALLBACK_VOCAB, CHUNK_IDS):
                if not first:
                    pieces.append(b",")
                pieces.append(orjson.dumps(chunk)[1:-1])
                first = False
                yield
            pieces += [b"]", tail]
            req.body = b"".join(pieces)
            ready = _Ready(req)
        elif live:
            refs = call.refs()
            holes = {r: _HOLE.format(k) for k, r in enumerate(refs)}
            req = build_request(call, wf_id, holes, self.trace.header, self.opts)
            body = self.engine.encode(req)
            parts, order = _split_holes(body, refs)
            if parts is None:  # a hole did not survive as itself: build this one when it is due
                return
            ready = _Ready(req, parts, order)
            req.body = b""
        else:
            req = build_request(call, wf_id, self.outputs, self.trace.header, self.opts, tokenizer=self.plan.vocab)
            req.body = self.engine.encode(req)
            ready = _Ready(req)
        req.chat = req.messages is not None
        req.messages = req.prompt = None
        size = len(req.body or b"") + sum(len(p) for p in ready.parts or ())
        self.ready[call.id] = ready
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _build_now(self, call: Call, wf_id: str) -> None:
        for _ in self._build(call, wf_id):
            pass
        self.done.add(call.id)

    def prebuild(self, progress: Any = None) -> None:
        """Before t0: everything when it fits the budget, else what is due first (up to the
        budget and the horizon); the window builds the rest during the run."""
        if not self.enabled:
            return
        t0 = time.perf_counter()
        total = sum(self.estimate(c) for c, _ in self.order)
        everything = total <= self.budget
        if progress is not None:
            progress.start(len(self.order), "preparing prompts")
        for i, (c, wf) in enumerate(self.order):
            if not everything and (self.bytes + self.estimate(c) > self.budget or self.due[c.id] > self.horizon):
                break
            self._build_now(c, wf)
            self.built_ahead += 1
            self._pos = i + 1
            if progress is not None and i % 16 == 0:
                progress.update(i + 1, 0)
        if progress is not None:
            progress.update(self._pos, 0)
            progress.stop()
        self.build_s += time.perf_counter() - t0
        self.all_ahead = everything

    async def fill(self, now: Callable[[], float], timer: Any = None) -> None:
        """During the run: keep building in due order, a slice at a time, away from deadlines
        (`timer`: the scheduler's DeadlineTimer), within the budget and the horizon."""
        self._room = asyncio.Event()
        while self._pos < len(self.order):
            c, wf = self.order[self._pos]
            if c.id in self.done:
                self._pos += 1
                continue
            wait = self.due[c.id] - self.horizon - now()
            if self.bytes + self.estimate(c) > self.budget and self.ready or wait > 0:
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=max(0.05, wait) if wait > 0 else 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            t = time.perf_counter()
            for _ in self._build(c, wf):
                self.build_s += time.perf_counter() - t
                await asyncio.sleep(0)
                while timer is not None and (d := timer.next_deadline()) is not None and d - time.perf_counter() < SLICE_GUARD_S:
                    await timer.wait_until(d + 100e-6)  # what is due goes out first
                t = time.perf_counter()
                if c.id in self.done:  # taken (built at issue) meanwhile
                    break
            else:
                self.build_s += time.perf_counter() - t
                if c.id not in self.done:
                    self.built_ahead += 1
            self.done.add(c.id)
            self._pos += 1
            await asyncio.sleep(0)

    # -- at issue

    def take(self, call: Call, wf_id: str, outputs: Mapping[str, str]) -> Request | None:
        """The call's request, body ready (live outputs spliced in); built now if the window
        had not reached it. None when the engine cannot take a prebuilt body."""
        if not self.enabled:
            return None
        r = self.ready.pop(call.id, None)
        if r is None:
            t = time.perf_counter()
            self._build_now(call, wf_id)
            self.build_s += time.perf_counter() - t
            self.built_at_issue += 1
            r = self.ready.pop(call.id, None)
            if r is None:  # holes that cannot be prebuilt: the caller builds the request
                return None
        self.done.add(call.id)
        req = r.req
        self.bytes -= len(req.body or b"") + sum(len(p) for p in r.parts or ())
        if r.parts is not None:
            out = [r.parts[0]]
            for ref, part in zip(r.refs or (), r.parts[1:]):
                out.append(orjson.dumps(outputs[ref])[1:-1])
                out.append(part)
            req.body = b"".join(out)
        if self._room is not None:
            self._room.set()
        return req

    def to_dict(self) -> dict[str, Any]:
        return {
            "built_ahead": self.built_ahead,
            "built_at_issue": self.built_at_issue,
            "all_before_t0": bool(getattr(self, "all_ahead", False)),
            "budget_mb": round(self.budget / 2**20, 1),
            "peak_mb": round(self.peak_bytes / 2**20, 1),
            "build_s": round(self.build_s, 3),
        }


def default_budget() -> int:
    """A quarter of the memory available now, at most 4 GiB."""
    import psutil

    return min(MAX_BUDGET, psutil.virtual_memory().available // 4)


def _due_order(workflows: list[Workflow], arrivals: list[float], wait_scale: float) -> tuple[list[tuple[Call, str]], dict[str, float]]:
    """Calls in the order they are expected due: roots at arrival + wait, a dependent after
    its dependencies' expected end (their recorded duration where the trace has one)."""
    due: dict[str, float] = {}
    items: list[tuple[float, int, Call, str]] = []
    k = 0
    for w, t in zip(workflows, arrivals):
        if len(w.calls) == 1:
            c = w.calls[0]
            due[c.id] = start = t + c.wait_s * wait_scale
            items.append((start, k, c, w.id))
            k += 1
            continue
        ends: dict[str, float] = {}
        for c in w.topo_order():
            start = max((ends[d] for d in c.deps), default=t) + c.wait_s * wait_scale
            dur = (c.t_end - c.t_issue) if c.t_end is not None and c.t_issue is not None else 0.0
            ends[c.id] = start + max(dur, 0.0)
            due[c.id] = start
            items.append((start, k, c, w.id))
            k += 1
    items.sort(key=lambda x: (x[0], x[1]))
    return [(c, wid) for _, _, c, wid in items], due


def _split(body: bytes, sep: bytes, n: int) -> list[bytes]:
    parts = body.split(sep)
    if len(parts) != n + 1:
        raise PromptError(f"cannot place the prompt in the engine's request body (placeholder found {len(parts) - 1} times)")
    return parts


def _split_holes(body: bytes, refs: list[str]) -> tuple[list[bytes] | None, list[str]]:
    """Body pieces between the holes, and which ref fills each, in body order."""
    found: list[tuple[int, int, str]] = []
    for k, r in enumerate(refs):
        h = _hole_json(k)
        i = body.find(h)
        if i < 0 or body.find(h, i + 1) >= 0:
            return None, []
        found.append((i, len(h), r))
    found.sort()
    parts, order, pos = [], [], 0
    for i, n, r in found:
        parts.append(body[pos:i])
        order.append(r)
        pos = i + n
    parts.append(body[pos:])
    return parts, order

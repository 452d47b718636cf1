"""Trace validation: the JSON Schema (structure) and the semantic checks no schema can say.

Used by `mrw validate`, by `mrw.trace.load` (so the replayer never sees a bad trace) and by
the trace-set unpacker. Every problem carries the JSON path where it was found.

Two ways in, one set of rules:

- bytes (`decode`, what `load` uses) or a parsed dict (`convert`, what `check` uses): msgspec
  decodes into the trace Structs, whose annotations (and the stricter decode view below) carry
  the schema's rules; `_text_ok` and `_header_ok` add the few that no annotation can say. This
  *fast structure check* may refuse a document the schema accepts (then the schema decides),
  never accept one it refuses (tests/test_validate_fast.py holds the two together). Where it
  refuses, jsonschema lists every problem with its path (`schema_problems`).
- the semantic rules are stated once, over the Structs: `semantic_report` lists every
  problem with its path, in document order. The dict API (`semantic_problems`, `check`) runs
  it on the Structs built from the dict. Before it, `_screen_workflow` screens each workflow
  as soon as msgspec has built it (so a million-call trace is not walked again, cold, after
  decoding); only where the screen doubts does the report walk the trace. The screen may doubt
  a valid trace (a forward dependency), never pass one the report would fault (the same tests
  hold it to the report). For a large buffer on two or more CPUs, `decode` forks: a child
  decodes the lean view that the screen reads (`_SeenTrace`) and screens it, while the parent
  builds the model and checks its structure; one byte comes back (`_ScreenChild`).
"""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import threading
from dataclasses import dataclass
from importlib import resources
from operator import attrgetter
from typing import Annotated, Any, Callable, Iterable, Literal, NoReturn

import msgspec
from msgspec import Meta

from mrw.errors import TraceError
from mrw.trace import FORMAT_NAME, FORMAT_VERSION, Call, Header, Message, Segment, Trace, Workflow

# Slack for float round-off when comparing recorded times (seconds).
TIME_EPS = 1e-3


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # JSON path, e.g. $.workflows[0].calls[3].deps[1]
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@functools.cache
def schema() -> dict:
    """The JSON Schema of the current format version, shipped inside the package."""
    text = resources.files("mrw").joinpath(f"schema/trace-v{FORMAT_VERSION}.schema.json").read_text()
    return json.loads(text)


@functools.cache
def _validator():
    import jsonschema

    cls = jsonschema.validators.validator_for(schema())
    return cls(schema())


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


@functools.cache
def _workflow_validator():
    """The schema's `workflow` definition as a validator of its own."""
    import jsonschema

    full = schema()
    sub = {"$schema": full["$schema"], "$id": full["$id"], "$defs": full["$defs"], "$ref": "#/$defs/workflow"}
    return jsonschema.validators.validator_for(full)(sub)


def schema_problems(doc: dict) -> list[Problem]:
    """Every schema violation, in document order.

    A workflow that passes the fast structure check holds none, so jsonschema walks the header
    and only the workflows the fast check refused: an invalid million-call trace is reported
    in seconds, every problem still with its path."""
    if type(doc) is dict and type(doc.get("workflows")) is list:
        top = dict(doc)
        top["workflows"] = []
        errs = [(list(e.absolute_path), e.message) for e in _validator().iter_errors(top)]
        wv = _workflow_validator()
        for i, w in enumerate(doc["workflows"]):
            if not _workflow_ok(w):
                errs.extend((["workflows", i, *e.absolute_path], e.message) for e in wv.iter_errors(w))
    else:
        errs = [(list(e.absolute_path), e.message) for e in _validator().iter_errors(doc)]
    errs.sort(key=lambda e: [str(x) for x in e[0]])
    return [Problem(_json_path(p), m) for p, m in errs]


# One step per old version: MIGRATIONS[v] turns a version-v document into a version-(v+1)
# one (and sets header.version). A v2 format adds `MIGRATIONS[1] = _v1_to_v2` and nothing else.
# Version 1 is the first version, so there is nothing to migrate yet.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


def migrate(doc: dict, name: str = "<trace>") -> dict:
    """Bring an older format version up to the current one, step by step, or refuse
    naming both the trace's version and the one this mrw reads."""
    header = doc.get("header") if isinstance(doc, dict) else None
    if not isinstance(header, dict):
        return doc  # the schema check reports the missing header
    fmt, ver = header.get("format"), header.get("version")
    if fmt not in (None, FORMAT_NAME):
        raise TraceError(f"{name}: format is {fmt!r}, not {FORMAT_NAME!r}; import it with `mrw import` instead")
    if not isinstance(ver, int) or isinstance(ver, bool):
        return doc  # the schema check reports a missing or non-integer version
    if ver > FORMAT_VERSION:
        raise TraceError(
            f"{name}: trace format version {ver} is newer than this mrw reads (version {FORMAT_VERSION}); upgrade mrw"
        )
    while ver < FORMAT_VERSION:
        step = MIGRATIONS.get(ver)
        if step is None:
            raise TraceError(
                f"{name}: trace format version {ver} is unknown or too old to migrate "
                f"(this mrw reads version {FORMAT_VERSION})"
            )
        doc = step(doc)
        new_ver = doc["header"]["version"]
        if new_ver != ver + 1:  # a broken step must not loop or skip silently
            raise TraceError(f"{name}: migration from version {ver} produced version {new_ver}, expected {ver + 1}")
        ver = new_ver
    return doc


# ---------------------------------------------------------------------------- fast structure check
# The decode's view of the model. The schema requires some fields that the model gives a default
# (so that `Call("a/0", "x")` works), and refuses `null` where the model's "absent" is None.
# These subclasses (same fields, same layout) make those fields required and non-null, so that
# decoding into them checks what the schema checks; each decoded object then gets its model
# class (`obj.__class__ = Call`: nothing is copied). msgspec refuses at the first problem and
# says nothing of the others: a refusal only sends the document to jsonschema (schema_problems),
# which lists them all.


class _CallIn(Call):
    deps: list[str]
    wait_s: Annotated[float, Meta(ge=0)]
    input_tokens: Annotated[int, Meta(ge=0)]
    output_tokens: Annotated[int, Meta(ge=0)]
    messages: list[Message] = None  # type: ignore[assignment]  # absent, never null
    prompt: list[Segment] = None  # type: ignore[assignment]
    hash_ids: list[int] = None  # type: ignore[assignment]


class _WorkflowIn(Workflow):
    calls: Annotated[list[_CallIn], Meta(min_length=1)]

    def __post_init__(self) -> None:
        # Right after msgspec built this workflow, while its objects are still in the CPU's
        # caches (a pass over a million cold objects costs more than the checks themselves).
        screen = getattr(_local, "screen", None)
        if screen is _ELSEWHERE:  # a child process screens this trace (`_ScreenChild`)
            _admit_calls(self.calls, Call)
        else:
            _screen_workflow(self, screen, Call)
        self.__class__ = Workflow


class _HeaderIn(Header, kw_only=True):
    format: Literal[FORMAT_NAME]
    version: Literal[FORMAT_VERSION]  # any other goes the slow way, through migrate()
    block_size: Annotated[int, Meta(ge=1)] = None  # type: ignore[assignment]


class _TraceIn(Trace):
    header: _HeaderIn
    workflows: list[_WorkflowIn]


# What the semantic screen reads, and nothing else: the view a child process decodes to screen
# a large trace while the parent builds the model (`_ScreenChild`). No constraints: the
# parent's decode checks the structure; where this view refuses, the child only doubts.
class _SeenMessage(msgspec.Struct, gc=False):
    content: list[dict[str, Any]]


class _SeenCall(msgspec.Struct, gc=False):
    id: str
    deps: list[str] = []
    t_issue: float | None = None
    t_first_token: float | None = None
    t_end: float | None = None
    messages: list[_SeenMessage] | None = None
    prompt: list[dict[str, Any]] | None = None
    sampling: dict[str, Any] = {}


class _SeenWorkflow(msgspec.Struct, gc=False):
    id: str
    arrival_s: float
    calls: list[_SeenCall]

    def __post_init__(self) -> None:
        _screen_workflow(self, _local.screen)  # type: ignore[arg-type]
        self.calls = []  # screened: freed now, and the next workflow reuses the memory


class _SeenTrace(msgspec.Struct, gc=False):
    workflows: list[_SeenWorkflow]


_DECODER = msgspec.json.Decoder(_TraceIn)
_SEEN_DECODER = msgspec.json.Decoder(_SeenTrace)
_local = threading.local()  # the _Screen of the decode running in this thread
_ELSEWHERE = object()  # as _local.screen: the screen runs in a child process
_RECORDED_AGAINST = ("engine", "engine_version", "model", "tokenizer")
_NO = object()  # "not an earlier call of this workflow"


class _Screen:
    """What the per-workflow screens of one trace found, for the whole-trace rules after."""

    __slots__ = ("ok", "ids", "scoped")

    def __init__(self) -> None:
        self.ok = True  # no workflow needs the report
        # every call id, each workflow's once (a repeat inside one clears `ok`), for one set
        # at the end unless all are scoped
        self.ids: list[str] = []
        self.scoped = True  # every call id so far is scoped (below)


def _screen_workflow(w: Workflow, screen: _Screen | None, model: type | None = None) -> None:
    """One workflow's share of the fast checks (and, given `model`, each call gets that class).

    Structure (raises ValueError, which msgspec turns into a refusal): what no annotation
    says, in `_text_ok`. Semantics: a screen that clears `screen.ok` wherever the report
    (`semantic_report`, the one statement of the rules) might find a problem. It asks that
    each dependency be an *earlier* call of the same workflow: then it exists, stays in its
    workflow, is not the call itself, and no cycle can form (a valid trace with a forward
    dependency only costs the report's walk).

    Call ids unique across the trace: mrw names a call `<workflow id>.<suffix>` (the
    recorder, the importers, the anonymiser). Where the workflow id holds no "." and each of
    its call ids starts with it and a ".", they cannot collide with another workflow's (the
    workflow ids are unique, and each call id's part before its first "." is its workflow's
    id); only the workflow's own ids are compared. Otherwise, if any workflow's ids are not
    scoped so, all ids go into one set at the end: a million cost 0.16 s there, the prefix
    test a third of that."""
    calls = w.calls
    ends: dict = {}  # id of each call so far -> its t_end
    get = ends.get
    arrival = w.arrival_s
    eps = TIME_EPS
    no = _NO
    ok = True
    wid = w.id
    prefix = wid + "."
    scoped = "." not in wid
    for c in calls:
        ti = c.t_issue
        te = c.t_end
        tf = c.t_first_token
        deps = c.deps
        cid = c.id
        if ti is not None:
            tie = ti + eps
            if tie < arrival or (te is not None and te + eps < ti) or (tf is not None and tf + eps < ti):
                ok = False
            for d in deps:
                de = get(d, no)
                if de is no or (de is not None and tie < de):
                    ok = False
        else:
            for d in deps:
                if get(d, no) is no:
                    ok = False
        if tf is not None and te is not None and te + eps < tf:
            ok = False
        if len(deps) > 1 and len(set(deps)) != len(deps):
            ok = False
        if scoped and not cid.startswith(prefix):
            scoped = False
        ends[cid] = te
        if c.messages is not None or c.prompt is not None or c.sampling:
            ok = _text_ok(c) and ok
        if model is not None:
            c.__class__ = model
    if len(ends) != len(calls):
        ok = False  # an id repeats inside the workflow
    if screen is not None:
        screen.ids.extend(ends)
        if not scoped:
            screen.scoped = False
        if not ok:
            screen.ok = False


def _admit_calls(calls: list[Call], model: type) -> None:
    """The structure share of `_screen_workflow` alone (its semantics run elsewhere)."""
    for c in calls:
        if c.messages is not None or c.prompt is not None or c.sampling:
            _text_ok(c)
        c.__class__ = model


def _text_ok(c: Call) -> bool:
    """Structure (raises ValueError): each segment holds exactly one key, "text" or "ref" (its
    value a string by type); `sampling`'s typed keys. Semantics (False: the report looks):
    not both messages and prompt; each ref is one of the call's deps."""
    if c.sampling and not _sampling_ok(c.sampling):
        raise ValueError("sampling does not match the schema")
    msgs, prompt, deps = c.messages, c.prompt, c.deps
    ok = msgs is None or prompt is None
    if prompt is not None and not _segments_ok(prompt, deps):
        ok = False
    if msgs is not None:
        for m in msgs:
            if not _segments_ok(m.content, deps):
                ok = False
    return ok


def _segments_ok(segs: list, deps: list[str]) -> bool:
    ok = True
    for s in segs:
        if len(s) != 1:
            raise ValueError("a segment holds exactly one of 'text' or 'ref'")
        if "text" not in s:
            ref = s.get("ref")
            if ref is None:
                raise ValueError("a segment holds exactly one of 'text' or 'ref'")
            if ref not in deps:
                ok = False
    return ok


def _num(x: Any) -> bool:
    t = type(x)
    return t is float or t is int


def _sampling_ok(s: dict) -> bool:
    for k, v in s.items():
        if k == "temperature":
            if not _num(v) or v < 0:
                return False
        elif k == "top_p":
            if not _num(v) or not 0 <= v <= 1:
                return False
        elif k == "max_tokens":
            if v is not None and (type(v) is not int or v < 1):
                return False
        elif k == "seed":
            if v is not None and type(v) is not int:
                return False
        elif k == "stop":
            if v is not None and type(v) is not list and type(v) is not str:
                return False
    return True


def _header_ok(h: Header) -> bool:
    """The typed keys inside `generator` and `recorded_against` (free-form dicts otherwise)."""
    g = h.generator
    if "name" in g and type(g["name"]) is not str:
        return False
    if "params" in g and type(g["params"]) is not dict:
        return False
    if "seed" in g and g["seed"] is not None and type(g["seed"]) is not int:
        return False
    r = h.recorded_against
    return all(r.get(k) is None or type(r[k]) is str for k in _RECORDED_AGAINST)


def _ids_ok(wfs: list, screen: _Screen) -> bool:
    """The screen's verdict with the id rules that span workflows."""
    return (screen.ok and len(set(map(_id, wfs))) == len(wfs)
            and (screen.scoped or len(set(screen.ids)) == len(screen.ids)))


def _hashes_ok(t: Trace) -> bool:
    """hash_ids need header.block_size: looked for only in a trace without one (text traces)."""
    return t.header.block_size is not None or all(c.hash_ids is None for w in t.workflows for c in w.calls)


def _whole_trace_ok(t: Trace, screen: _Screen) -> bool:
    return _ids_ok(t.workflows, screen) and _hashes_ok(t)


def _finish(t: _TraceIn, ok: bool, report: bool = True) -> tuple[Trace, list[Problem] | None] | None:
    h = t.header
    if not _header_ok(h):
        return None
    t.__class__ = Trace
    h.__class__ = Header
    if ok and _hashes_ok(t):
        return t, []
    return t, (semantic_report(t) if report else None)


def decode(data: Any, *, report: bool = True, parallel: bool | None = None) -> tuple[Trace, list[Problem] | None] | None:
    """JSON bytes (or any buffer) to the model in one msgspec decode that parses, checks the
    structure and builds, with the semantic problems of the result (usually none: then only the
    screen ran). With `report=False`, None in place of the problems where the screen doubts:
    `semantic_report` says which, later. None where the fast structure check refuses the
    document: then `parse`, `migrate` and `schema_problems` say why, or accept it after all.

    `parallel` (default: for a large buffer, where `_can_fork` allows): the semantic screen
    runs in a forked child process on its own lean decode while this one builds the model; a
    million-call trace loads in about two thirds of the time on two cores."""
    if parallel is None:
        parallel = len(data) >= _PARALLEL_MIN and _can_fork()
    child = _ScreenChild(data) if parallel else None
    screen = _ELSEWHERE if child is not None else _Screen()
    try:
        _local.screen = screen
        try:
            t = _DECODER.decode(data)
        except msgspec.DecodeError:  # ValidationError included
            return None
        finally:
            _local.screen = None
        ok = child.verdict() if child is not None else _ids_ok(t.workflows, screen)  # type: ignore[arg-type]
    finally:
        if child is not None:
            child.close()
    return _finish(t, ok, report)


_PARALLEL_MIN = 32 << 20  # bytes (some 140,000 calls): below, the screen takes under 0.1 s


def _can_fork() -> bool:
    """A fork is safe here and worth it: Linux, two CPUs or more for this process, and no other
    thread (the child gets only the calling thread: a lock that another one holds would stay
    held in it, and native pools such as a tokenizer's warn)."""
    cpus = getattr(os, "sched_getaffinity", None)
    if cpus is None or len(cpus(0)) < 2:
        return False
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1]) == 1
    except (OSError, ValueError):
        pass
    return False


class _ScreenChild:
    """A forked child that decodes the lean view (`_SeenTrace`) of the same buffer, screens it
    workflow by workflow as `decode` would, and sends one byte: b"1" where the screen passes,
    b"0" where it doubts or anything went wrong (then the report decides, as it always may)."""

    def __init__(self, data: Any) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            self._child(data, w)  # never returns
        os.close(w)
        self.pid, self.fd = pid, r

    @staticmethod
    def _child(data: Any, w: int) -> NoReturn:
        verdict = b"0"
        try:
            # Signals are the parent's business (it kills this child when it stops): none may
            # run its handlers here, or reach its event loop through the wakeup fd.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            gc.disable()
            screen = _local.screen = _Screen()
            seen = _SEEN_DECODER.decode(data)
            if _ids_ok(seen.workflows, screen):
                verdict = b"1"
        except BaseException:
            pass
        finally:
            try:
                os.write(w, verdict)
            finally:
                os._exit(0)

    def verdict(self) -> bool:
        """Wait for the child's verdict (about when this process's decode ends, on two CPUs)."""
        try:
            return os.read(self.fd, 1) == b"1"
        except OSError:
            return False

    def close(self) -> None:
        """Stop the child if it still runs (the decode refused, or Ctrl-C) and reap it."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            os.close(self.fd)
            self.pid = 0


def convert(doc: Any) -> tuple[Trace, list[Problem]] | None:
    """`decode` for an already-parsed document (its dicts and strings are shared, not copied)."""
    screen = _local.screen = _Screen()
    try:
        t = msgspec.convert(doc, _TraceIn)
    except msgspec.ValidationError:
        return None
    finally:
        _local.screen = None
    return _finish(t, _ids_ok(t.workflows, screen))


def _workflow_ok(w: Any) -> bool:
    """The fast structure check of one workflow (for schema_problems)."""
    try:
        msgspec.convert(w, _WorkflowIn)
    except msgspec.ValidationError:
        return False
    return True


def check(doc: Any) -> list[Problem]:
    """Every problem of a parsed (and migrated) document: the schema's first; the semantic
    rules only on a structurally sound document (they assume its shape)."""
    got = convert(doc)
    if got is not None:
        return got[1]
    probs = schema_problems(doc)
    if probs:
        return probs
    return trace_problems(Trace.from_dict(doc))  # valid, in a form the fast check refuses (say 3.0 tokens)


# ---------------------------------------------------------------------------- semantic rules


def trace_problems(trace: Trace) -> list[Problem]:
    """The semantic rules over a trace built any way; every problem with its JSON path."""
    screen = _Screen()
    try:
        for w in trace.workflows:
            _screen_workflow(w, screen)
        ok = _whole_trace_ok(trace, screen)
    except Exception:  # a trace built in code, outside the schema: the report decides
        ok = False
    return [] if ok else semantic_report(trace)


def semantic_problems(doc: dict) -> list[Problem]:
    """`trace_problems` of a schema-valid document."""
    return trace_problems(Trace.from_dict(doc))


_id = attrgetter("id")


def semantic_report(trace: Trace) -> list[Problem]:
    """The semantic rules, walked call by call (`trace_problems` screens first). Ids unique, dependencies exist and form a DAG, refs point at dependencies, times
    consistent: every problem, with its path, in document order.

    JSON paths and the call -> workflow map are only built when a problem is found, and the
    cycle search only runs on a workflow where some call depends on a later one (or ids
    repeat): calls that only depend on earlier calls cannot form a cycle."""
    out: list[Problem] = []
    block_size = trace.header.block_size
    seen_wf: set[str] = set()
    seen_call: dict[str, str] = {}
    owner: dict | None = None
    eps = TIME_EPS
    for wi, wf in enumerate(trace.workflows):
        wid = wf.id
        if wid in seen_wf:
            out.append(Problem(f"$.workflows[{wi}].id", f"duplicate workflow id {wid!r}"))
        seen_wf.add(wid)
        calls = wf.calls
        index: dict[str, int] = {}
        for ci, c in enumerate(calls):
            cid = c.id
            if cid in seen_call:
                out.append(Problem(f"$.workflows[{wi}].calls[{ci}].id", f"duplicate call id {cid!r} (also in workflow {seen_call[cid]!r})"))
            else:
                seen_call[cid] = wid
                index[cid] = ci
        maybe_cycle = len(index) != len(calls)
        arrival = wf.arrival_s
        for ci, c in enumerate(calls):
            cid = c.id
            deps = c.deps
            if deps:
                if len(deps) > 1 and len(set(deps)) != len(deps):
                    out.append(Problem(f"$.workflows[{wi}].calls[{ci}].deps", "lists a dependency twice"))
                for di, d in enumerate(deps):
                    j = index.get(d)
                    if j is not None and d != cid:
                        if j > ci:
                            maybe_cycle = True
                        continue
                    if d == cid:
                        out.append(Problem(f"$.workflows[{wi}].calls[{ci}].deps[{di}]", "a call cannot depend on itself"))
                    else:
                        if owner is None:
                            owner = {c2.id: w2.id for w2 in trace.workflows for c2 in w2.calls}
                        where = f" (it is in workflow {owner[d]!r}; dependencies stay inside a workflow)" if d in owner else ""
                        out.append(Problem(f"$.workflows[{wi}].calls[{ci}].deps[{di}]", f"dependency {d!r} does not exist{where}"))
            msgs = c.messages
            prompt = c.prompt
            if msgs is not None and prompt is not None:
                out.append(Problem(f"$.workflows[{wi}].calls[{ci}]", "has both 'messages' and 'prompt'; keep one"))
            if msgs is not None or prompt is not None:
                for spath, seg in _segments(c, f"$.workflows[{wi}].calls[{ci}]"):
                    ref = seg.get("ref")
                    if ref is not None and ref not in deps:
                        out.append(Problem(spath, f"refers to {ref!r}, which is not among this call's deps"))
            if block_size is None and c.hash_ids is not None:
                out.append(Problem(f"$.workflows[{wi}].calls[{ci}].hash_ids", "hash_ids need header.block_size"))
            t_i, t_f, t_e = c.t_issue, c.t_first_token, c.t_end
            if t_i is None and t_f is None and t_e is None:
                continue
            cpath = f"$.workflows[{wi}].calls[{ci}]"
            if t_i is not None and t_e is not None and t_e + eps < t_i:
                out.append(Problem(f"{cpath}.t_end", f"ends ({t_e}) before it is issued ({t_i})"))
            if t_f is not None and t_i is not None and t_f + eps < t_i:
                out.append(Problem(f"{cpath}.t_first_token", f"first token ({t_f}) before issue ({t_i})"))
            if t_f is not None and t_e is not None and t_e + eps < t_f:
                out.append(Problem(f"{cpath}.t_end", f"ends ({t_e}) before its first token ({t_f})"))
            if t_i is not None:
                if t_i + eps < arrival:
                    out.append(Problem(f"{cpath}.t_issue", f"issued ({t_i}) before its workflow arrives ({arrival})"))
                for d in deps:
                    dj = index.get(d)
                    dep_end = calls[dj].t_end if dj is not None else None
                    if dep_end is not None and t_i + eps < dep_end:
                        out.append(Problem(f"{cpath}.t_issue", f"issued ({t_i}) before its dependency {d!r} ended ({dep_end})"))
        if maybe_cycle:
            out.extend(_cycle_problems(calls, index, f"$.workflows[{wi}]"))
    return out


def _segments(c: Call, cpath: str):
    if c.messages is not None:
        for mi, m in enumerate(c.messages):
            for si, s in enumerate(m.content):
                yield f"{cpath}.messages[{mi}].content[{si}]", s
    if c.prompt is not None:
        for si, s in enumerate(c.prompt):
            yield f"{cpath}.prompt[{si}]", s


def _cycle_problems(calls: list[Call], index: dict[str, int], wpath: str) -> list[Problem]:
    """Kahn's algorithm over the calls whose deps exist; whatever is left sits on a cycle."""
    indeg = {cid: 0 for cid in index}
    children: dict[str, list[str]] = {cid: [] for cid in index}
    for c in calls:
        cid = c.id
        if cid not in index:
            continue
        for d in set(c.deps):
            if d in index and d != cid:
                indeg[cid] += 1
                children[d].append(cid)
    ready = [cid for cid, n in indeg.items() if n == 0]
    while ready:
        cid = ready.pop()
        for ch in children[cid]:
            indeg[ch] -= 1
            if indeg[ch] == 0:
                ready.append(ch)
    stuck = sorted((cid for cid, n in indeg.items() if n > 0), key=lambda x: index[x])
    if not stuck:
        return []
    return [Problem(f"{wpath}.calls[{index[stuck[0]]}].deps", f"dependency cycle among calls {stuck}")]


def raise_if_problems(problems: list[Problem], name: str) -> None:
    if not problems:
        return
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s); run `mrw validate {name}` for all)" if len(problems) > 1 else ""
    raise TraceError(f"{name}: invalid trace: {first}{more}", problems)

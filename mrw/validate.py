"""Trace validation: the JSON Schema (structure) and the semantic checks no schema can say.

Used by `mrw validate`, by `mrw.trace.load` (so the replayer never sees a bad trace) and by
the trace-set unpacker. Every problem carries the JSON path where it was found.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable

from mrw.errors import TraceError
from mrw.trace import FORMAT_NAME, FORMAT_VERSION

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

    A workflow that passes the fast check holds none, so jsonschema walks the header and only
    the workflows the fast check refused: an invalid million-call trace is reported in
    seconds, every problem still with its path."""
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


def semantic_problems(doc: dict) -> list[Problem]:
    """Ids unique, dependencies exist and form a DAG, refs point at dependencies, times consistent.

    One pass over the calls, written for million-call traces: JSON paths and the call ->
    workflow map are only built when a problem is found, and the cycle search only runs on a
    workflow where some call depends on a later one (or ids repeat): calls that only depend
    on earlier calls cannot form a cycle."""
    out: list[Problem] = []
    header = doc.get("header", {})
    block_size = header.get("block_size")
    seen_wf: set[str] = set()
    seen_call: dict[str, str] = {}
    owner: dict | None = None
    eps = TIME_EPS
    for wi, wf in enumerate(doc.get("workflows", [])):
        wid = wf.get("id")
        if wid in seen_wf:
            out.append(Problem(f"$.workflows[{wi}].id", f"duplicate workflow id {wid!r}"))
        seen_wf.add(wid)
        calls = wf.get("calls", [])
        index: dict[str, int] = {}
        for ci, c in enumerate(calls):
            cid = c.get("id")
            if cid in seen_call:
                out.append(Problem(f"$.workflows[{wi}].calls[{ci}].id", f"duplicate call id {cid!r} (also in workflow {seen_call[cid]!r})"))
            else:
                seen_call[cid] = wid
                index[cid] = ci
        maybe_cycle = len(index) != len(calls)
        arrival = wf.get("arrival_s", 0.0)
        for ci, c in enumerate(calls):
            cid = c.get("id")
            deps = c.get("deps", [])
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
                            owner = {c2.get("id"): w2.get("id") for w2 in doc.get("workflows", []) for c2 in w2.get("calls", [])}
                        where = f" (it is in workflow {owner[d]!r}; dependencies stay inside a workflow)" if d in owner else ""
                        out.append(Problem(f"$.workflows[{wi}].calls[{ci}].deps[{di}]", f"dependency {d!r} does not exist{where}"))
            msgs = c.get("messages")
            prompt = c.get("prompt")
            if msgs is not None and prompt is not None:
                out.append(Problem(f"$.workflows[{wi}].calls[{ci}]", "has both 'messages' and 'prompt'; keep one"))
            if msgs is not None or prompt is not None:
                for spath, seg in _segments(c, f"$.workflows[{wi}].calls[{ci}]"):
                    ref = seg.get("ref") if isinstance(seg, dict) else None
                    if ref is not None and ref not in deps:
                        out.append(Problem(spath, f"refers to {ref!r}, which is not among this call's deps"))
            if block_size is None and c.get("hash_ids") is not None:
                out.append(Problem(f"$.workflows[{wi}].calls[{ci}].hash_ids", "hash_ids need header.block_size"))
            t_i, t_f, t_e = c.get("t_issue"), c.get("t_first_token"), c.get("t_end")
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
                    dep_end = calls[dj].get("t_end") if dj is not None else None
                    if dep_end is not None and t_i + eps < dep_end:
                        out.append(Problem(f"{cpath}.t_issue", f"issued ({t_i}) before its dependency {d!r} ended ({dep_end})"))
        if maybe_cycle:
            out.extend(_cycle_problems(calls, index, f"$.workflows[{wi}]"))
    return out


def _segments(c: dict, cpath: str):
    msgs = c.get("messages")
    if isinstance(msgs, list):
        for mi, m in enumerate(msgs):
            for si, s in enumerate(m.get("content", []) if isinstance(m, dict) else []):
                yield f"{cpath}.messages[{mi}].content[{si}]", s
    prompt = c.get("prompt")
    if isinstance(prompt, list):
        for si, s in enumerate(prompt):
            yield f"{cpath}.prompt[{si}]", s


def _cycle_problems(calls: list[dict], index: dict[str, int], wpath: str) -> list[Problem]:
    """Kahn's algorithm over the calls whose deps exist; whatever is left sits on a cycle."""
    indeg = {cid: 0 for cid in index}
    children: dict[str, list[str]] = {cid: [] for cid in index}
    for c in calls:
        cid = c.get("id")
        if cid not in index:
            continue
        for d in set(c.get("deps", [])):
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


def check(doc: dict) -> list[Problem]:
    """Schema first; semantics only on a structurally sound document (they assume its shape).

    The schema is checked in two steps: `structure_ok`, a hand-written walk that accepts
    only documents the schema accepts (a million calls in well under a second), and, only
    where it refuses, jsonschema's `iter_errors`, which lists every violation with its path
    (and has the last word: the fast walk may refuse a rare valid form, never accept an
    invalid one)."""
    if not structure_ok(doc):
        probs = schema_problems(doc)
        if probs:
            return probs
    return semantic_problems(doc)


# ---------------------------------------------------------------------------- fast structure check
# A transcription of mrw/schema/trace-v1.schema.json for the common case. It may only be
# stricter than the schema, never looser; tests/test_validate_fast.py holds the two together.

_HEADER_KEYS = frozenset(("format", "version", "workload", "generator", "recorded_against", "created",
                          "mrw_version", "block_size", "description", "extra"))
_WORKFLOW_KEYS = frozenset(("id", "arrival_s", "tags", "calls"))
_CALL_KEYS = frozenset(("id", "node", "deps", "wait_s", "input_tokens", "output_tokens", "messages", "prompt",
                        "sampling", "t_issue", "t_first_token", "t_end", "output", "hash_ids"))
_CALL_REQUIRED = frozenset(("id", "node", "deps", "wait_s", "input_tokens", "output_tokens"))
_ROLES = frozenset(("system", "user", "assistant", "tool", "developer"))
_RECORDED_AGAINST = ("engine", "engine_version", "model", "tokenizer")


def _num(x: Any) -> bool:
    t = type(x)
    return t is float or t is int


def _segments_ok(segs: Any) -> bool:
    if type(segs) is not list:
        return False
    for s in segs:
        if type(s) is not dict or len(s) != 1:
            return False
        v = s.get("text")
        if v is None:
            v = s.get("ref")
        if type(v) is not str:
            return False
    return True


def _header_ok(h: Any) -> bool:
    if type(h) is not dict or not h.keys() <= _HEADER_KEYS:
        return False
    if h.get("format") != FORMAT_NAME or type(h.get("version")) is not int or h["version"] != 1:
        return False
    w = h.get("workload")
    if type(w) is not str or not w:
        return False
    g = h.get("generator")
    if g is not None:
        if type(g) is not dict:
            return False
        if "name" in g and type(g["name"]) is not str:
            return False
        if "params" in g and type(g["params"]) is not dict:
            return False
        if "seed" in g and g["seed"] is not None and type(g["seed"]) is not int:
            return False
    elif "generator" in h:
        return False
    r = h.get("recorded_against")
    if r is not None:
        if type(r) is not dict:
            return False
        for k in _RECORDED_AGAINST:
            if k in r and r[k] is not None and type(r[k]) is not str:
                return False
    elif "recorded_against" in h:
        return False
    for k in ("created", "mrw_version", "description"):
        if k in h and type(h[k]) is not str:
            return False
    if "block_size" in h and (type(h["block_size"]) is not int or h["block_size"] < 1):
        return False
    if "extra" in h and type(h["extra"]) is not dict:
        return False
    return True


def _sampling_ok(s: Any) -> bool:
    if type(s) is not dict:
        return False
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


def _call_ok(c: Any) -> bool:
    if type(c) is not dict:
        return False
    keys = c.keys()
    if not keys <= _CALL_KEYS:
        return False
    try:  # the required keys: a KeyError is a missing one
        v = c["id"]
        if type(v) is not str or not v or type(c["node"]) is not str:
            return False
        deps = c["deps"]
        wait = c["wait_s"]
        n_in = c["input_tokens"]
        n_out = c["output_tokens"]
    except KeyError:
        return False
    if type(deps) is not list or type(n_in) is not int or n_in < 0 or type(n_out) is not int or n_out < 0:
        return False
    t = type(wait)
    if (t is not float and t is not int) or wait < 0:
        return False
    for d in deps:
        if type(d) is not str:
            return False
    if len(keys) == 6:
        return True
    for k in ("t_issue", "t_first_token", "t_end"):
        v = c.get(k)
        if v is not None:
            t = type(v)
            if (t is not float and t is not int) or v < 0:
                return False
    v = c.get("hash_ids")
    if v is not None:
        if type(v) is not list:
            return False
        for x in v:
            if type(x) is not int:
                return False
    elif "hash_ids" in c:
        return False
    if len(keys) == 6 + ("t_issue" in c) + ("t_first_token" in c) + ("t_end" in c) + ("hash_ids" in c):
        return True
    v = c.get("messages")
    if v is not None:
        if type(v) is not list:
            return False
        for m in v:
            if type(m) is not dict or len(m) != 2 or type(m.get("role")) is not str or m["role"] not in _ROLES \
                    or not _segments_ok(m.get("content")):
                return False
    elif "messages" in c:
        return False
    if "prompt" in c and not _segments_ok(c["prompt"]):
        return False
    if "sampling" in c and not _sampling_ok(c["sampling"]):
        return False
    if "output" in c and c["output"] is not None and type(c["output"]) is not str:
        return False
    return True


def _workflow_ok(w: Any) -> bool:
    if type(w) is not dict or not w.keys() <= _WORKFLOW_KEYS:
        return False
    v = w.get("id")
    if type(v) is not str or not v:
        return False
    v = w.get("arrival_s")
    if not _num(v) or v < 0:
        return False
    if "tags" in w and type(w["tags"]) is not dict:
        return False
    calls = w.get("calls")
    if type(calls) is not list or not calls:
        return False
    call_ok = _call_ok
    for c in calls:
        if not call_ok(c):
            return False
    return True


def structure_ok(doc: Any) -> bool:
    """True only if `doc` satisfies the trace schema (a False means: ask jsonschema)."""
    if type(doc) is not dict or len(doc) != 2 or not _header_ok(doc.get("header")):
        return False
    wfs = doc.get("workflows")
    if type(wfs) is not list:
        return False
    wf_ok = _workflow_ok
    for w in wfs:
        if not wf_ok(w):
            return False
    return True


def raise_if_problems(problems: list[Problem], name: str) -> None:
    if not problems:
        return
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s); run `mrw validate {name}` for all)" if len(problems) > 1 else ""
    raise TraceError(f"{name}: invalid trace: {first}{more}", problems)

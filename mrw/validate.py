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


def schema_problems(doc: dict) -> list[Problem]:
    """Every schema violation, in document order."""
    errs = sorted(_validator().iter_errors(doc), key=lambda e: [str(x) for x in e.absolute_path])
    return [Problem(_json_path(e.absolute_path), e.message) for e in errs]


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
    """Ids unique, dependencies exist and form a DAG, refs point at dependencies, times consistent."""
    out: list[Problem] = []
    header = doc.get("header", {})
    block_size = header.get("block_size")
    seen_wf: set[str] = set()
    seen_call: dict[str, str] = {}
    owner = {c.get("id"): wf.get("id") for wf in doc.get("workflows", []) for c in wf.get("calls", [])}
    for wi, wf in enumerate(doc.get("workflows", [])):
        wpath = f"$.workflows[{wi}]"
        wid = wf.get("id")
        if wid in seen_wf:
            out.append(Problem(f"{wpath}.id", f"duplicate workflow id {wid!r}"))
        seen_wf.add(wid)
        calls = wf.get("calls", [])
        index: dict[str, int] = {}
        for ci, c in enumerate(calls):
            cid = c.get("id")
            if cid in seen_call:
                out.append(Problem(f"{wpath}.calls[{ci}].id", f"duplicate call id {cid!r} (also in workflow {seen_call[cid]!r})"))
            else:
                seen_call[cid] = wid
                index[cid] = ci
        arrival = wf.get("arrival_s", 0.0)
        for ci, c in enumerate(calls):
            cpath = f"{wpath}.calls[{ci}]"
            deps = c.get("deps", [])
            if len(set(deps)) != len(deps):
                out.append(Problem(f"{cpath}.deps", "lists a dependency twice"))
            for di, d in enumerate(deps):
                if d == c.get("id"):
                    out.append(Problem(f"{cpath}.deps[{di}]", "a call cannot depend on itself"))
                elif d not in index:
                    where = f" (it is in workflow {owner[d]!r}; dependencies stay inside a workflow)" if d in owner else ""
                    out.append(Problem(f"{cpath}.deps[{di}]", f"dependency {d!r} does not exist{where}"))
            if "messages" in c and "prompt" in c:
                out.append(Problem(cpath, "has both 'messages' and 'prompt'; keep one"))
            dep_set = set(deps)
            for spath, seg in _segments(c, cpath):
                ref = seg.get("ref") if isinstance(seg, dict) else None
                if ref is not None and ref not in dep_set:
                    out.append(Problem(spath, f"refers to {ref!r}, which is not among this call's deps"))
            if c.get("hash_ids") is not None and block_size is None:
                out.append(Problem(f"{cpath}.hash_ids", "hash_ids need header.block_size"))
            t_i, t_f, t_e = c.get("t_issue"), c.get("t_first_token"), c.get("t_end")
            if t_i is not None and t_e is not None and t_e + TIME_EPS < t_i:
                out.append(Problem(f"{cpath}.t_end", f"ends ({t_e}) before it is issued ({t_i})"))
            if t_f is not None and t_i is not None and t_f + TIME_EPS < t_i:
                out.append(Problem(f"{cpath}.t_first_token", f"first token ({t_f}) before issue ({t_i})"))
            if t_f is not None and t_e is not None and t_e + TIME_EPS < t_f:
                out.append(Problem(f"{cpath}.t_end", f"ends ({t_e}) before its first token ({t_f})"))
            if t_i is not None and t_i + TIME_EPS < arrival:
                out.append(Problem(f"{cpath}.t_issue", f"issued ({t_i}) before its workflow arrives ({arrival})"))
            if t_i is not None:
                for d in deps:
                    dj = index.get(d)
                    dep_end = calls[dj].get("t_end") if dj is not None else None
                    if dep_end is not None and t_i + TIME_EPS < dep_end:
                        out.append(Problem(f"{cpath}.t_issue", f"issued ({t_i}) before its dependency {d!r} ended ({dep_end})"))
        out.extend(_cycle_problems(calls, index, wpath))
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
    """Schema first; semantics only on a structurally sound document (they assume its shape)."""
    probs = schema_problems(doc)
    if probs:
        return probs
    return semantic_problems(doc)


def raise_if_problems(problems: list[Problem], name: str) -> None:
    if not problems:
        return
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s); run `mrw validate {name}` for all)" if len(problems) > 1 else ""
    raise TraceError(f"{name}: invalid trace: {first}{more}", problems)

"""Weka / Claude Code agentic traces (callanjfox/kv-cache-tester; SemiAnalysis' cc-traces-weka
on Hugging Face; AIPerf's `weka_trace`): import only.

One JSON object per conversation (a `.json` file each, a directory of them, or JSONL with one
per line): `{"id", "models", "block_size": 64, "hash_id_scope": "local", "tool_tokens",
"system_tokens", "requests": [...], "totals"}`. `requests` interleaves API calls of the main
agent (`{"t", "type": "n"|"s", "model", "in", "out", "hash_ids", "input_types",
"output_types", "stop", "api_time", "think_time", "ttft"}`: `t` seconds from the
conversation's start, `api_time` the server's time, `think_time` the client's delay before
the call, `ttft` for streamed calls) with sub-agent markers (`{"type": "subagent", "t",
"agent_id", "subagent_type", "duration_ms", "status", "requests": [...]}`). `hash_ids` are
ids of the prompt's whole 64-token blocks (floor(in/64) of them), equal ids equal blocks
within a file (`local` scope) or across files (`global`).

Import: a conversation is a workflow. The main agent's calls form a chain; a sub-agent's
calls form a branch that starts after the main call before its marker, and the main call
after the marker joins every sub-agent since the previous main call (a sub-agent launched
with status `async_launched` is not waited for). A call's wait is its `think_time` when it
follows the previous call of its own agent; otherwise the time from its dependencies' end
(t + api_time) to its own t. Sub-agent request times come in two conventions: relative to
the sub-agent's start (kv-cache-tester's raw traces, where the marker's `t` is the
sub-agent's end, `duration_ms` after its start) or absolute (SemiAnalysis' published
traces); each sub-agent's is told from its times (relative times start before the main
call that launched it could have ended) and the import says how many of each it found.
`local` hash ids are renumbered per conversation (file k's id h becomes k * 2**40 + h) so
that conversations share no blocks by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrw.formats import Format, FormatError, import_header, register
from mrw.formats.common import (HashCounts, count, hash_ids, input_files, json_lines, listed, read_document, seconds,
                                text)
from mrw.trace import Call, Trace, Workflow

WHAT = "a Weka / Claude Code trace (JSON with block_size and requests)"
_TOL = 1.0  # s: the raw traces' t is in whole seconds
_LOCAL_BITS = 40
_KNOWN = {"id", "models", "block_size", "hash_id_scope", "tool_tokens", "system_tokens", "requests", "totals"}
_REQ_KEYS = {"t", "type", "model", "in", "out", "hash_ids", "input_types", "output_types", "stop", "api_time",
             "think_time", "ttft"}


class _Stats:
    def __init__(self) -> None:
        self.models: set[str] = set()
        self.relative_end = self.relative_spawn = self.absolute = 0
        self.background = self.empty = 0
        self.clamped = 0
        self.hashes: HashCounts | None = None
        self.unknown: set[str] = set()


@register
class Weka(Format):
    name = "weka"
    description = "Weka / Claude Code trace JSON: requests with t, in, out, api_time, think_time, 64-token hash_ids, sub-agents (import only)"
    can_export = False

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        if first is not None:
            return isinstance(first.get("requests"), list) and "block_size" in first
        return b'"requests"' in head and b'"block_size"' in head

    def read(self, path: Path, *, workload: str | None = None, **_: Any):
        st = _Stats()
        workflows: list[Workflow] = []
        seen: set[str] = set()
        block_size: int | None = None
        for f in input_files(path, (".json", ".json.gz", ".jsonl", ".jsonl.gz"), WHAT):
            if f.name.endswith((".jsonl", ".jsonl.gz")):
                docs = json_lines(f, WHAT)
            else:
                doc = read_document(f, WHAT)
                items = doc if isinstance(doc, list) else [doc]
                docs = ((f"{f}" + (f"[{i}]" if isinstance(doc, list) else ""), d) for i, d in enumerate(items))
            for where, d in docs:
                if not isinstance(d, dict) or not isinstance(d.get("requests"), list):
                    raise FormatError(f"{where}: expected an object with a 'requests' list; is this {WHAT}?")
                bs = count(d, "block_size", where, bound=1 << 20)
                if not bs:
                    raise FormatError(f"{where}: 'block_size' must be at least 1")
                if block_size is not None and bs != block_size:
                    raise FormatError(f"{where}: block_size {bs} differs from the other traces' {block_size}; "
                                      "import them separately")
                block_size = bs
                if st.hashes is None:
                    st.hashes = HashCounts(bs, "calls", "in", "the file's block_size")
                wf = _workflow(d, where, len(workflows), bs, st, f.name.split(".")[0])
                if wf.id in seen:
                    raise FormatError(f"{where}: trace id {wf.id!r} appears twice")
                seen.add(wf.id)
                workflows.append(wf)
        if not workflows:
            raise FormatError(f"{path}: no traces; is this {WHAT}?")
        notes = [
            "each conversation is a workflow with its own clock (t from its start): every workflow arrives at 0 s "
            "(replay --rate spreads them)",
            "the main agent's calls form a chain; a sub-agent's calls branch from the main call before its marker "
            "and the next main call joins them",
            "waits: think_time where a call follows the previous call of its own agent, else the time from its "
            "dependencies' end (t + api_time) to its t",
            "no text; not kept: per-call models, input_types, output_types, stop, request type n/s (every call "
            "is replayed streamed), agent ids (sub-agents are numbered sa0, sa1, ... in call ids)",
        ]
        if st.models:
            notes.append(f"models in the trace (replay uses the served model for all): {listed(st.models)}")
        if st.relative_end:
            notes.append(f"{st.relative_end} sub-agents' request times were relative to the sub-agent's start, "
                         "taken as the marker's t minus duration_ms (the marker records its end)")
        if st.relative_spawn:
            notes.append(f"{st.relative_spawn} sub-agents' request times were relative to the marker's t (its start)")
        if st.absolute:
            notes.append(f"{st.absolute} sub-agents' request times were absolute (from the conversation's start)")
        if st.background:
            notes.append(f"{st.background} sub-agents ran in the background (status async_launched): not joined")
        if st.empty:
            notes.append(f"{st.empty} sub-agents recorded no requests and are left out")
        if st.clamped:
            notes.append(f"{st.clamped} calls' end (t + api_time) fell after a dependent call's t (t is in whole "
                         "seconds): their end is set to that t")
        notes += st.hashes.notes()  # type: ignore[union-attr]
        if st.unknown:
            notes.append(f"fields not kept: {listed(st.unknown)}")
        header = import_header(self.name, path, notes, workload=workload, block_size=block_size)
        return Trace(header=header, workflows=workflows), notes


def _workflow(d: dict, where: str, ordinal: int, bs: int, st: _Stats, fallback_id: str) -> Workflow:
    tid = text(d, "id", where) or fallback_id
    scope = d.get("hash_id_scope", "local")
    if scope not in ("local", "global"):
        raise FormatError(f"{where}: hash_id_scope must be 'local' or 'global', not {scope!r}")
    offset = ordinal << _LOCAL_BITS if scope == "local" else 0
    renumbered: dict[int, int] = {}  # local id -> its id in the trace, one int object per block
    st.unknown.update(k for k in d if k not in _KNOWN)
    calls: list[Call] = []
    think: dict[str, float | None] = {}  # call id -> think_time, where it follows its own agent's previous call
    stream_prev: dict[str, str] = {}  # call id -> the previous call of the same agent

    def make(r: Any, rwhere: str, t: float, cid: str, node: str) -> Call:
        if not isinstance(r, dict) or r.get("type") not in ("n", "s"):
            kind = r.get("type") if isinstance(r, dict) else type(r).__name__
            raise FormatError(f"{rwhere}: a request must be an object of type 'n' or 's' here, not {kind!r}")
        st.unknown.update(k for k in r if k not in _REQ_KEYS)
        if isinstance(r.get("model"), str):
            st.models.add(r["model"][:80])
        n_in = count(r, "in", rwhere)
        hids = hash_ids(r, "hash_ids", rwhere)
        if hids is not None:
            if offset and hids:
                if max(hids) >> _LOCAL_BITS:
                    raise FormatError(f"{rwhere}: a local hash id is 2**{_LOCAL_BITS} or more")
                renumbered.update((h, offset | h) for h in set(hids).difference(renumbered))
                hids = list(map(renumbered.__getitem__, hids))
            st.hashes.add(hids, n_in)  # type: ignore[union-attr,arg-type]
        api = seconds(r, "api_time", rwhere)
        ttft = seconds(r, "ttft", rwhere)
        t_end = t + api if api is not None and api >= 0 else None
        t_first = t + ttft if ttft is not None and ttft >= 0 else None
        if t_first is not None and t_end is not None:
            t_first = min(t_first, t_end)
        think[cid] = seconds(r, "think_time", rwhere)
        return Call(id=cid, node=node, input_tokens=n_in, output_tokens=count(r, "out", rwhere),  # type: ignore[arg-type]
                    t_issue=t, t_first_token=t_first, t_end=t_end, hash_ids=hids)

    def end(c: Call) -> float:
        return c.t_end if c.t_end is not None else c.t_issue  # type: ignore[return-value]

    main_prev: Call | None = None
    joins: list[Call] = []  # last calls of the sub-agents since main_prev
    n_main = n_sa = 0
    for i, r in enumerate(d["requests"]):
        rwhere = f"{where} requests[{i}]"
        if isinstance(r, dict) and r.get("type") == "subagent":
            inner = r.get("requests")
            if not isinstance(inner, list):
                raise FormatError(f"{rwhere}: a subagent needs a 'requests' list")
            if not inner:
                st.empty += 1
                continue
            times = [seconds(q, "t", f"{rwhere}.requests[{k}]", required=True) if isinstance(q, dict) else None
                     for k, q in enumerate(inner)]
            if any(x is None for x in times):
                raise FormatError(f"{rwhere}: every sub-agent request must be an object with a 't'")
            base = _subagent_base(r, rwhere, min(times), main_prev, st)  # type: ignore[type-var]
            order = sorted(range(len(inner)), key=lambda k: (times[k], k))
            prev: Call | None = None
            node = text(r, "subagent_type", rwhere) or "subagent"
            for k, qi in enumerate(order):
                t = base + times[qi]  # type: ignore[operator]
                if t < 0:
                    raise FormatError(f"{rwhere}.requests[{qi}]: starts before the conversation ({t:.3f} s)")
                c = make(inner[qi], f"{rwhere}.requests[{qi}]", t, f"{tid}.sa{n_sa}.c{k}", node)
                if prev is not None:
                    c.deps = [prev.id]
                    stream_prev[c.id] = prev.id
                elif main_prev is not None:
                    c.deps = [main_prev.id]
                calls.append(c)
                prev = c
            if r.get("status") == "async_launched":
                st.background += 1
            else:
                joins.append(prev)  # type: ignore[arg-type]
            n_sa += 1
            continue
        t = seconds(r, "t", rwhere, required=True) if isinstance(r, dict) else None
        if t is None or t < 0:
            raise FormatError(f"{rwhere}: a request needs a 't' of seconds >= 0 from the conversation's start")
        c = make(r, rwhere, t, f"{tid}.m{n_main}", "main")
        c.deps = ([main_prev.id] if main_prev is not None else []) + [j.id for j in joins]
        if main_prev is not None and not joins:
            stream_prev[c.id] = main_prev.id
        calls.append(c)
        main_prev, joins = c, []
        n_main += 1
    if not calls:
        raise FormatError(f"{where}: no requests")

    by_id = {c.id: c for c in calls}
    for c in calls:  # whole-second t: an end after a dependent's start is cut to it
        for dep in c.deps:
            p = by_id[dep]
            if p.t_end is not None and p.t_end > c.t_issue:  # type: ignore[operator]
                p.t_end = c.t_issue
                if p.t_first_token is not None:
                    p.t_first_token = min(p.t_first_token, p.t_end)  # type: ignore[type-var]
                st.clamped += 1
    for c in calls:
        th = think.get(c.id)
        if c.id in stream_prev and th is not None:
            c.wait_s = max(0.0, th)
        elif c.deps:
            c.wait_s = round(max(0.0, c.t_issue - max(end(by_id[x]) for x in c.deps)), 6)  # type: ignore[operator]
        else:
            c.wait_s = c.t_issue  # type: ignore[assignment]
    tags = {k: d[k] for k in ("tool_tokens", "system_tokens") if isinstance(d.get(k), int)}
    return Workflow(id=tid, arrival_s=0.0, calls=calls, tags=tags)


def _subagent_base(r: dict, where: str, first_t: float, main_prev: Call | None, st: _Stats) -> float:
    """The time to add to a sub-agent's request times (0 when they are absolute)."""
    marker = seconds(r, "t", where, required=True)
    dur_ms = seconds(r, "duration_ms", where, unit="ms")
    launched = (main_prev.t_end if main_prev.t_end is not None else main_prev.t_issue) if main_prev else 0.0
    relative = first_t + _TOL < launched if main_prev is not None else first_t == 0.0
    if not relative:
        st.absolute += 1
        return 0.0
    if dur_ms is not None and dur_ms >= 0 and marker - dur_ms / 1000 >= launched - _TOL:  # type: ignore[operator]
        st.relative_end += 1
        return marker - dur_ms / 1000  # type: ignore[operator]
    st.relative_spawn += 1
    return marker  # type: ignore[return-value]

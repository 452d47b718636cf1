"""AIPerf's dependency-graph input: the `dag_jsonl` dataset (AIPerf >= 0.13).

One conversation per line: `{"session_id", "turns": [turn...], "context_mode"?,
"orchestrator"?, "spawns"?, "rounds"?, "pre_session_spawns"?}`; a turn is `{"messages",
"max_tokens"?, "model"?, "tools"?, "extra"?, "forks"?, "spawns"?, "delay"?}` (delay in ms,
`extra` merged into the request body). Turns of a session run one after another; `spawns`
start child sessions after a turn and the next turn (or `join_at`) waits for them; `forks`
start children that inherit the conversation so far; an `orchestrator` with `rounds` fires
rounds of child sessions, each round waiting for the previous one.

Export: a workflow that is a chain becomes one session whose turns are its calls; any other
DAG becomes an orchestrator whose rounds are the DAG's levels (longest-path depth), each call
a one-turn session. A level-synchronous schedule is exact for chains, fork-join and
map-reduce shapes; where a call at level k+1 does not depend on every call at level k it
would wait for them anyway, and the export says how many calls gain such waits. Every turn
is a complete message array (`context_mode: message_array_with_responses`) with upstream
outputs spliced in as recorded, `max_tokens` = `min_tokens` = the recorded output tokens and
`ignore_eos`, so lengths are exact on vLLM. AIPerf has no arrival times (its load settings
sample the root conversations), no token counts of inputs and no recorded timings.

Import: the reverse, for all the shapes above. The files carry no input token counts, so
import needs the model's tokenizer (`--tokenizer`); earlier turns' live responses, which the
default context mode threads into later prompts, count as their max_tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from mrw.formats import Format, FormatError, import_header, register, text_messages
from mrw.trace import Call, Message, Trace, Workflow

ISOLATED = "message_array_with_responses"
ROLES = {"system", "user", "assistant", "tool", "developer"}


def _levels(w: Workflow) -> dict[str, int]:
    level: dict[str, int] = {}
    for c in w.topo_order():
        level[c.id] = max((level[d] + 1 for d in c.deps), default=0)
    return level


def _is_chain(w: Workflow) -> list[Call] | None:
    order = w.topo_order()
    for i, c in enumerate(order):
        if c.deps != ([order[i - 1].id] if i else []):
            return None
    return order


def _turn(trace: Trace, c: Call, tokenizer: Any, notes: set[str]) -> dict[str, Any]:
    t: dict[str, Any] = {"messages": text_messages(trace, c, tokenizer, trace.header.block_size, "AIPerf DAG export")}
    if c.output_tokens >= 1:
        t["max_tokens"] = c.output_tokens
        extra: dict[str, Any] = {"min_tokens": c.output_tokens, "ignore_eos": True}
    else:
        extra = {}
        notes.add("calls with 0 output tokens carry no max_tokens (AIPerf requires >= 1)")
    for k in ("temperature", "top_p", "seed"):
        if c.sampling.get(k) is not None:
            extra[k] = c.sampling[k]
    if extra:
        t["extra"] = extra
    if c.wait_s:
        t["delay"] = round(c.wait_s * 1000, 3)
    return t


@register
class AIPerfDag(Format):
    name = "aiperf-dag"
    description = "AIPerf dag_jsonl: sessions with turns, spawns/forks and orchestrator rounds"

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        if first is None or not isinstance(first.get("session_id"), str):
            return False
        turns = first.get("turns")
        return first.get("orchestrator") is True or (
            isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and "messages" in turns[0])

    # ------------------------------------------------------------------ export

    def write(self, trace: Trace, path: Path, *, tokenizer: Any = None, **_: Any) -> list[str]:
        from mrw.trace import write_atomic

        lines: list[bytes] = []
        notes: set[str] = set()
        gained = 0
        for w in trace.workflows:
            chain = _is_chain(w)
            if chain is not None:
                lines.append(orjson.dumps({"session_id": w.id, "context_mode": ISOLATED,
                                           "turns": [_turn(trace, c, tokenizer, notes) for c in chain]}))
                continue
            level = _levels(w)
            by_level: dict[int, list[Call]] = {}
            for c in w.calls:
                by_level.setdefault(level[c.id], []).append(c)
            ancestors: dict[str, set[str]] = {}
            for c in w.topo_order():
                ancestors[c.id] = set(c.deps).union(*(ancestors[d] for d in c.deps)) if c.deps else set()
            for k in sorted(by_level)[1:]:
                before = {x.id for j in by_level if j < k for x in by_level[j]}
                gained += sum(1 for c in by_level[k] if not before <= ancestors[c.id])
            rounds = [{"spawns": [f"{w.id}/{c.id}" for c in by_level[k]]} for k in sorted(by_level)]
            lines.append(orjson.dumps({"session_id": w.id, "orchestrator": True, "rounds": rounds}))
            for c in w.calls:
                lines.append(orjson.dumps({"session_id": f"{w.id}/{c.id}", "context_mode": ISOLATED,
                                           "turns": [_turn(trace, c, tokenizer, notes)]}))
        write_atomic(path, b"\n".join(lines) + b"\n")
        out = sorted(notes)
        if gained:
            out.append(f"{gained} calls wait for calls they do not depend on: AIPerf rounds are level-synchronous "
                       "and these DAGs are not (chains, fork-join and map-reduce shapes are exact)")
        out.append("lost: arrival times (AIPerf samples root conversations), input token counts, recorded timings, node names")
        return out

    # ------------------------------------------------------------------ import

    def read(self, path: Path, *, tokenizer: Any = None, workload: str | None = None, **_: Any):
        if tokenizer is None:
            raise FormatError("AIPerf DAG files carry no input token counts; pass --tokenizer DIR (the model's tokenizer) to count them")
        convs: dict[str, dict] = {}
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                raw = raw.strip().removeprefix(b"\xef\xbb\xbf")
                if not raw:
                    continue
                try:
                    d = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    raise FormatError(f"{path}:{lineno}: not JSON ({e.msg})") from None
                if not isinstance(d, dict) or not isinstance(d.get("session_id"), str):
                    raise FormatError(f"{path}:{lineno}: a line must be an object with a string session_id")
                if d["session_id"] in convs:
                    raise FormatError(f"{path}:{lineno}: duplicate session_id {d['session_id']!r}")
                convs[d["session_id"]] = d
        children: set[str] = set()
        for d in convs.values():
            for t in d.get("turns") or []:
                children.update(e if isinstance(e, str) else e.get("child") for e in t.get("forks") or [])
                for e in t.get("spawns") or []:
                    children.update([e] if isinstance(e, str) else e.get("children") or [])
            children.update(d.get("spawns") or [])
            children.update(d.get("pre_session_spawns") or [])
            if isinstance(d.get("rounds"), list):
                for r in d["rounds"]:
                    children.update(r.get("spawns") or [])
        missing = sorted(c for c in children if c not in convs)
        if missing:
            raise FormatError(f"{path}: branch target {missing[0]!r} is not a session in the file")
        roots = [sid for sid in convs if sid not in children]
        if not roots:
            raise FormatError(f"{path}: no root conversation (every session is some other session's child: a cycle?)")
        notes: set[str] = {
            "no arrival times: every root conversation arrives at 0 s (AIPerf's load settings schedule them)",
            "no input token counts: counted with the given tokenizer's chat template; earlier live responses count as their max_tokens",
            "no recorded timings, no hash_ids",
        }
        b = _Builder(convs, tokenizer, notes, path)
        workflows = []
        for sid in roots:
            b.calls = []
            b.instantiate(sid, [], [], f"{sid}/", depth=0)
            workflows.append(Workflow(id=sid, arrival_s=0.0, calls=b.calls))
        for w in workflows:
            outs: dict[str, int] = {c.id: c.output_tokens for c in w.calls}
            for c in w.calls:
                msgs = [{"role": m.role, "content": "".join(s.get("text", "") for s in m.content)} for m in c.messages or []]
                ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
                c.input_tokens = len(ids["input_ids"] if hasattr(ids, "keys") else ids) + sum(outs[r] for r in c.refs())
        header = import_header(self.name, path, sorted(notes), workload=workload)
        return Trace(header=header, workflows=workflows), sorted(notes)


class _Builder:
    """Unrolls AIPerf's sessions into one mrw workflow per root conversation."""

    def __init__(self, convs: dict[str, dict], tokenizer: Any, notes: set[str], path: Path):
        self.convs, self.tok, self.notes, self.path = convs, tokenizer, notes, path
        self.calls: list[Call] = []

    def _messages(self, turn: dict, where: str) -> list[Message]:
        raw = turn.get("messages")
        if not isinstance(raw, list) or not raw:
            raise FormatError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for m in raw:
            if not isinstance(m, dict) or "role" not in m:
                raise FormatError(f"{where}: every message needs a role")
            c = m.get("content")
            if isinstance(c, list):
                texts = [p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"]
                if len(texts) != len(c):
                    self.notes.add("non-text content parts (images, audio) dropped")
                c = "".join(texts)
            if m.get("tool_calls"):
                self.notes.add("tool calls inside messages dropped (their text content kept)")
            role = m["role"] if m["role"] in ROLES else "user"
            out.append(Message(role, [{"text": c if isinstance(c, str) else ""}]))
        return out

    def instantiate(self, sid: str, inherited: list[Message], first_deps: list[str], prefix: str, depth: int,
                    extra_wait: float = 0.0) -> list[str]:
        """Add sid's calls; return the ids a join on this session waits for."""
        if depth > 64:
            raise FormatError(f"{self.path}: sessions nest deeper than 64 (a cycle through {sid!r}?)")
        d = self.convs[sid]
        if d.get("orchestrator"):
            return self._orchestrator(sid, d, first_deps, prefix, depth)
        mode = str(d.get("context_mode") or "deltas_without_responses").lower()
        turns = d.get("turns") or []
        if not turns:
            raise FormatError(f"{self.path}: session {sid!r} has no turns")
        acc = list(inherited)
        prev: Call | None = None
        joins: dict[int, list[str]] = {}
        for pre in d.get("pre_session_spawns") or []:
            self.notes.add("pre_session_spawns are fire-and-forget children started with their parent")
            self.instantiate(pre, [], list(first_deps), f"{prefix}{pre}/", depth + 1)
        terminal: list[str] = []
        for k, t in enumerate(turns):
            where = f"{self.path}: session {sid!r} turn {k}"
            own = self._messages(t, where)
            msgs = own if mode == ISOLATED else acc + own
            mt = t.get("max_tokens")
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
                raise FormatError(f"{where}: no max_tokens; mrw needs each call's output length")
            extra = t.get("extra") or {}
            if not (extra.get("min_tokens") == mt or extra.get("ignore_eos")):
                self.notes.add("output lengths are max_tokens caps (no min_tokens/ignore_eos): the recording may have stopped earlier")
            if t.get("tools"):
                self.notes.add("tool definitions dropped")
            sampling = {k2: extra[k2] for k2 in ("temperature", "top_p", "seed") if k2 in extra}
            deps = ([prev.id] if prev is not None else list(first_deps)) + joins.pop(k, [])
            call = Call(
                id=f"{prefix}t{k}",
                node=sid.split("/")[-1] if depth else "turn",
                deps=list(dict.fromkeys(deps)),
                wait_s=float(t.get("delay") or 0.0) / 1000 + (extra_wait if k == 0 else 0.0),
                output_tokens=mt,
                messages=[Message(m.role, list(m.content)) for m in msgs],
                sampling=sampling,
            )
            # refs to earlier turns of the conversation are transitive deps already; the
            # trace model wants every spliced output among the call's own deps
            call.deps = list(dict.fromkeys(call.deps + call.refs()))
            self.calls.append(call)
            if mode == "deltas_without_responses":
                acc = msgs + [Message("assistant", [{"ref": call.id}])]
            elif mode != ISOLATED:
                acc = msgs
            for e in t.get("spawns") or []:
                kids, join_at = ([e], None) if isinstance(e, str) else (e.get("children") or [], e.get("join_at"))
                join_at = k + 1 if join_at is None else int(join_at)
                for child in kids:
                    ends = self.instantiate(child, [], [call.id], f"{prefix}{child}/", depth + 1)
                    if join_at < len(turns):
                        joins.setdefault(join_at, []).extend(ends)
                    else:
                        self.notes.add("spawns on a session's last turn are fire-and-forget (nothing joins them)")
            for e in t.get("forks") or []:
                child, bg = (e, False) if isinstance(e, str) else (e.get("child"), bool(e.get("background")))
                ends = self.instantiate(child, acc, [call.id], f"{prefix}{child}/", depth + 1)
                if not bg and k == len(turns) - 1:
                    terminal.extend(ends)
            prev = call
        assert prev is not None
        return [prev.id] + terminal

    def _orchestrator(self, sid: str, d: dict, first_deps: list[str], prefix: str, depth: int) -> list[str]:
        rounds = d.get("rounds")
        base_think = float(d.get("think_time_ms") or 0.0)
        if d.get("think_time_sigma") is not None:
            self.notes.add("sampled (lognormal) think times kept at their median")
        if rounds is None:
            self.notes.add("orchestrator spawns without rounds are fire-and-forget: its children are independent")
            for child in d.get("spawns") or []:
                self.instantiate(child, [], list(first_deps), f"{prefix}{child}/", depth + 1)
            return list(first_deps)
        plan = ([(list(r.get("spawns") or []), r.get("think_time_ms")) for r in rounds] if isinstance(rounds, list)
                else [(list(d.get("spawns") or []), None)] * int(rounds))
        prev_ends = list(first_deps)
        for k, (kids, think) in enumerate(plan):
            wait = (base_think if think is None else float(think)) / 1000
            ends: list[str] = []
            for child in kids:
                ends += self.instantiate(child, [], prev_ends, f"{prefix}r{k}/{child}/", depth + 1, extra_wait=wait)
            prev_ends = ends
        return prev_ends

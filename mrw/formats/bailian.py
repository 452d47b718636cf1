"""Qwen-Bailian usage traces (alibaba-edu/qwen-bailian-usagetraces-anon): import only.

JSONL, one request per line: `{"chat_id": 159, "parent_chat_id": 55, "timestamp": 61.114,
"input_length": 521, "output_length": 132, "type": "text", "turn": 2, "hash_ids": [...]}`.
`timestamp` is seconds from the start of the trace file (fractional, or whole seconds in
some files); `parent_chat_id` is the request this one follows in a multi-turn chat (-1 for
a chat's first request); `hash_ids` are salted SipHash ids of 16-token blocks, remapped to
sequential integers, so equal ids are equal blocks across the whole file; `type` is the
request type (text, search, image, file); `turn` its turn number in the chat. Every row is
a whole request: a follow-up's input_length and hash_ids cover the history it carried.

Import: a chat (a root and every request reached from it through parent_chat_id) is one
workflow; each request depends on its parent. The trace records only arrivals, so a
request's wait is the time between its parent's arrival and its own (the parent's service
time included: nothing says when the parent finished). chat_id and turn are kept in the call
id (`<chat_id>.t<turn>`), type as the call's node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrw.formats import Format, FormatError, import_header, register
from mrw.formats.common import HashCounts, count, hash_ids, json_lines, seconds, text
from mrw.trace import Call, Trace, Workflow

BLOCK_SIZE = 16  # the published files' blksz_16: 16-token SipHash blocks
WHAT = "a Qwen-Bailian JSONL trace"


@register
class Bailian(Format):
    name = "bailian"
    description = "Qwen-Bailian JSONL: chat_id, parent_chat_id, timestamp (s), type, turn, 16-token hash_ids (import only)"
    can_export = False

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        return first is not None and "chat_id" in first and "parent_chat_id" in first and "input_length" in first

    def read(self, path: Path, *, block_size: int | None = None, workload: str | None = None, **_: Any):
        bs = block_size or BLOCK_SIZE
        rows: dict[int, tuple] = {}  # chat_id -> (parent, t, n_in, n_out, type, turn, hash_ids, where)
        order: list[int] = []
        has_hash = 0
        counts = HashCounts(bs)
        for where, d in json_lines(path, WHAT):
            cid = _chat_id(d, "chat_id", where)
            parent = _chat_id(d, "parent_chat_id", where, root_ok=True)
            if cid in rows:
                raise FormatError(f"{where}: chat_id {cid} also at {rows[cid][7]}; chat ids must be unique")
            if parent == cid:
                raise FormatError(f"{where}: chat_id {cid} is its own parent")
            t = seconds(d, "timestamp", where, required=True)
            if t < 0:  # type: ignore[operator]
                raise FormatError(f"{where}: 'timestamp' must be >= 0 (seconds from the trace start), not {t}")
            n_in = count(d, "input_length", where)
            hids = hash_ids(d, "hash_ids", where)
            if hids is not None:
                has_hash += 1
                counts.add(hids, n_in)  # type: ignore[arg-type]
            turn = count(d, "turn", where, required=False, bound=10**9)
            rows[cid] = (parent, t, n_in, count(d, "output_length", where), text(d, "type", where) or "request",
                         turn, hids, where)
            order.append(cid)
        if not rows:
            raise FormatError(f"{path}: no requests; is this {WHAT}?")

        orphans = 0
        root_of: dict[int, int] = {}
        for cid in order:  # the chat each request belongs to: follow parents up to a root
            path_ids = []
            cur = cid
            while cur not in root_of:
                parent = rows[cur][0]
                if parent == -1 or parent not in rows:
                    orphans += parent != -1
                    root_of[cur] = cur
                    break
                path_ids.append(cur)
                if len(path_ids) > len(rows):
                    raise FormatError(f"{rows[cid][7]}: parent_chat_id links form a cycle through chat {cid}")
                cur = parent
            for x in path_ids:
                root_of[x] = root_of[cur]

        chats: dict[int, list[int]] = {}
        for cid in order:
            chats.setdefault(root_of[cid], []).append(cid)
        workflows: list[Workflow] = []
        for root, members in chats.items():
            members.sort(key=lambda c: (rows[c][1], rows[c][5] or 0))
            arrival = rows[root][1]
            calls = []
            for cid in members:
                parent, t, n_in, n_out, rtype, turn, hids, where = rows[cid]
                has_parent = cid != root
                if has_parent and t < rows[parent][1]:
                    raise FormatError(f"{where}: arrives ({t} s) before its parent chat {parent} ({rows[parent][1]} s)")
                wait = t - rows[parent][1] if has_parent else 0.0
                calls.append(Call(
                    id=f"{cid}.t{turn}" if turn is not None else str(cid),
                    node=rtype,
                    deps=[_call_id(parent, rows)] if has_parent else [],
                    wait_s=round(wait, 6),
                    input_tokens=n_in,
                    output_tokens=n_out,
                    t_issue=t,
                    hash_ids=hids,
                ))
            workflows.append(Workflow(id=f"chat{root}", arrival_s=arrival, calls=calls))
        workflows.sort(key=lambda w: w.arrival_s)

        notes = [
            "dependencies: each request follows its parent_chat_id; a chat (a root and its follow-ups) is one workflow",
            "waits are the time from a request's parent arriving to its own arrival: the trace has no end times, "
            "so the parent's own service time is part of the wait",
            "no text, no first-token or end times; type is the call's node, chat_id and turn are in the call id "
            "(<chat_id>.t<turn>)",
        ]
        if orphans:
            notes.append(f"{orphans} requests name a parent_chat_id that is not in the file (cut off by the trace's "
                         "window): each starts a workflow of its own")
        if has_hash < len(rows):
            notes.append(f"{len(rows) - has_hash} requests have no hash_ids: their prompts share nothing at replay")
        notes += counts.notes()
        header = import_header(self.name, path, notes, workload=workload, block_size=bs if has_hash else None)
        return Trace(header=header, workflows=workflows), notes


def _chat_id(d: dict, key: str, where: str, root_ok: bool = False) -> int:
    v = d.get(key, -1 if root_ok else None)
    if isinstance(v, bool) or not isinstance(v, int) or not (-1 <= v <= 2**63 - 1) or (v == -1 and not root_ok):
        raise FormatError(f"{where}: {key!r} must be an integer chat id{' (-1 for none)' if root_ok else ''}, not {v!r}")
    return v


def _call_id(cid: int, rows: dict[int, tuple]) -> str:
    turn = rows[cid][5]
    return f"{cid}.t{turn}" if turn is not None else str(cid)

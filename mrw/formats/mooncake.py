"""Mooncake trace JSONL (kvcache-ai/Mooncake; replayed by AIPerf's `mooncake_trace` loader).

One request per line: `{"timestamp": ms, "input_length": n, "output_length": n,
"hash_ids": [...]}`; hash_ids are ids of `block_size`-token prompt blocks (512 in the
published traces), equal for equal prefixes. AIPerf adds optional `session_id` and `delay`
(ms after the previous turn of the session), and `text_input`.

What Mooncake cannot express: dependencies, wait times, workflows, node names, first-token
and end times, text. Import therefore makes each request its own workflow, or, with
group="session" and AIPerf's session_id, one workflow per session whose turns form a chain
(each after the previous, as AIPerf replays them). Export keeps token counts, issue times
(ms) and prefix sharing exactly (hash ids are renumbered densely; equal stays equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from mrw.formats import Format, FormatError, import_header, issue_time, register
from mrw.formats.common import MAX_SECONDS, HashCounts, count, hash_ids, json_lines
from mrw.trace import Call, Trace, Workflow

DEFAULT_BLOCK_SIZE = 512  # the published Mooncake traces, and AIPerf's --isl-block-size default
_MAX_MS = int(MAX_SECONDS * 1000)
WHAT = "a Mooncake JSONL trace"


@register
class Mooncake(Format):
    name = "mooncake"
    description = "Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids"

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        return (first is not None and "input_length" in first and "output_length" in first
                and "chat_id" not in first and "parent_chat_id" not in first and "turns" not in first)

    def read(self, path: Path, *, block_size: int | None = None, group: str = "none", workload: str | None = None, **_: Any):
        if group not in ("none", "session"):
            raise FormatError(f"group must be 'none' or 'session', not {group!r}")
        bs = block_size or DEFAULT_BLOCK_SIZE
        rows: list[tuple[str, dict]] = []
        for where, d in json_lines(path, WHAT):
            if "parent_chat_id" in d or "chat_id" in d:
                raise FormatError(f"{where}: has chat_id/parent_chat_id: a Qwen-Bailian trace (timestamps in seconds, "
                                  f"parent links), not Mooncake; run `mrw import bailian {path}`")
            rows.append((where, d))
        if not rows:
            raise FormatError(f"{path}: no requests")
        notes = [
            "no text: prompts are synthesised from hash_ids at replay",
            "no first-token or end times: only issue times (ms)",
            "no node names: every call is node 'request'",
        ]
        counts = HashCounts(bs)
        has_hash = any("hash_ids" in d for _, d in rows)
        calls_by_wf: dict[str, list[tuple[Call, float | None]]] = {}
        order: list[str] = []
        for i, (where, d) in enumerate(rows):
            n_in = count(d, "input_length", where, required="text_input" not in d)
            if n_in is None:
                raise FormatError(f"{where}: has text_input but no input_length; mrw needs token counts (add input_length)")
            n_out = count(d, "output_length", where)
            ts = count(d, "timestamp", where, required=False, bound=_MAX_MS)
            delay = count(d, "delay", where, required=False, bound=_MAX_MS)
            hids = hash_ids(d, "hash_ids", where)
            if hids is not None:
                counts.add(hids, n_in)
            sid = d.get("session_id") if group == "session" else None
            wid = str(sid) if sid is not None else f"m{i}"
            if wid not in calls_by_wf:
                calls_by_wf[wid] = []
                order.append(wid)
            k = len(calls_by_wf[wid])
            prev = calls_by_wf[wid][-1][0] if k else None
            t = ts / 1000 if ts is not None else None
            call = Call(
                id=f"{wid}.c{k}" if sid is not None else f"{wid}",
                node="request",
                deps=[prev.id] if prev is not None else [],
                wait_s=(delay or 0) / 1000,
                input_tokens=n_in,
                output_tokens=n_out,  # type: ignore[arg-type]
                t_issue=t,
                hash_ids=list(hids) if hids is not None else None,
                prompt=[{"text": d["text_input"]}] if isinstance(d.get("text_input"), str) else None,
            )
            calls_by_wf[wid].append((call, t))
        workflows = []
        untimed = 0
        for wid in order:
            calls = [c for c, _ in calls_by_wf[wid]]
            times = [t for _, t in calls_by_wf[wid] if t is not None]
            arrival = min(times) if times else 0.0
            untimed += not times  # later turns without one follow their previous turn: they have no arrival
            if len(calls) > 1:  # a session: later turns' timestamps, if any, are kept; the chain is the order
                for c in calls:
                    if c.t_issue is not None and c.t_issue < arrival:
                        c.t_issue = arrival
            workflows.append(Workflow(id=wid, arrival_s=arrival, calls=calls))
        if group == "session":
            notes.insert(0, "dependencies: the turns of one session_id form a chain (as AIPerf replays sessions); requests without session_id are their own workflow")
        else:
            notes.insert(0, "no dependencies: every request is its own workflow (--group session makes AIPerf session_id chains)")
        if untimed:
            what = "sessions have" if group == "session" else "requests have"
            notes.append(f"{untimed} {what} no timestamp; they arrive at 0 s")
        if not has_hash:
            notes.append("no hash_ids: nothing is known about prefix sharing; replay prompts share nothing")
        notes += counts.notes()
        header = import_header(self.name, path, notes, workload=workload, block_size=bs if has_hash else None)
        return Trace(header=header, workflows=workflows), notes

    def write(self, trace: Trace, path: Path, *, block_size: int | None = None, tokenizer: Any = None, **_: Any) -> list[str]:
        from mrw.prefix import block_hashes, coarsen

        src_bs = trace.header.block_size
        rows: list[tuple[float, int, dict]] = []
        need_hash = [c for _, c in trace.calls() if c.hash_ids is None]
        if need_hash and tokenizer is None:
            raise FormatError(
                f"Mooncake needs hash_ids and {len(need_hash)} calls have none; pass --tokenizer DIR to hash "
                "their prompts (or export an anonymised trace)"
            )
        if need_hash:
            import secrets

            from mrw.anonymize import prompt_token_ids

            if src_bs is None:
                src_bs = block_size or 16
            salt = secrets.token_bytes(16)
            outputs = trace.recorded_outputs()
        out_bs = block_size or src_bs or DEFAULT_BLOCK_SIZE
        if src_bs is not None and out_bs % src_bs:
            raise FormatError(f"--block-size {out_bs} must be a multiple of the trace's block size {src_bs}")
        dense: dict[int, int] = {}
        seq = 0
        for w in trace.workflows:
            for c in w.calls:
                hids = c.hash_ids
                if hids is None:
                    hids = block_hashes(prompt_token_ids(c, outputs, tokenizer), src_bs, salt)  # type: ignore[arg-type]
                if out_bs != src_bs:
                    hids = coarsen(hids, src_bs, out_bs)  # type: ignore[arg-type]
                t = issue_time(w.arrival_s, c)
                rows.append((t, seq, {"timestamp": round(t * 1000), "input_length": c.input_tokens,
                                      "output_length": c.output_tokens, "hash_ids": hids}))
                seq += 1
        rows.sort(key=lambda r: (r[0], r[1]))
        lines = []
        for _, _, d in rows:
            d["hash_ids"] = [dense.setdefault(h, len(dense)) for h in d["hash_ids"]]
            lines.append(orjson.dumps(d))
        from mrw.trace import write_atomic

        write_atomic(path, b"\n".join(lines) + b"\n")
        untimed = sum(1 for _, c in trace.calls() if c.t_issue is None)
        notes = [
            f"hash_ids are blocks of {out_bs} tokens (tell the consumer: AIPerf --isl-block-size {out_bs})",
            "lost: dependencies, wait times, workflows, node names, first-token/end times, text, sampling",
        ]
        if untimed:
            notes.append(f"{untimed} calls had no recorded issue time; written at their workflow's arrival")
        return notes

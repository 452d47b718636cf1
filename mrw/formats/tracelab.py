"""TraceLab round traces (uw-syfi/TraceLab: `llm_round_trace.jsonl`, released as
`syfi_coding_trace.jsonl.gz`): import only.

JSONL (plain or gzip), one LLM round of a Claude Code or Codex session per line:
`{"provider", "session_id", "round_index", "model", "input_tokens_total", "prefix_tokens",
"newly_append_tokens", "output_tokens", "reasoning_output_tokens", "timing_events": [{"event_type",
"timestamp", ...}], "tools": [{"tool_name", "emitted_at", "result_at", "tool_wall_latency_ms",
...}], ...}`. `input_tokens_total = prefix_tokens + newly_append_tokens`, prefix_tokens the part
the provider's cache held. Timestamps are ISO-8601 UTC. There are no content hashes and no
link from a sub-agent's session to the session that spawned it.

Import: a session is a workflow. A round is issued at its latest input event (`user_message`
or `tool_result`: it could not be sent before the last of them) and ends at its last model
output event (`reasoning`, `text`, `tool_call`); rounds depend on the rounds that had ended
when they were issued (mrw.formats.common.happens_before: a chain when they ran one after
another, as they do), and a round's wait is the tool and user time between. prefix_tokens
become hash_ids (mrw.formats.common.CachedBlocks, --block-size, 64 by default): a round
shares the first prefix_tokens/B blocks of the previous round of its model. output_tokens
is the output (Codex's reasoning_output_tokens are part of it, as Codex counts them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrw.formats import Format, FormatError, import_header, register
from mrw.formats.common import (CachedBlocks, count, happens_before, input_files, iso_utc, json_lines, listed,
                                parse_time_ns, text)
from mrw.trace import Call, Trace, Workflow

DEFAULT_BLOCK_SIZE = 64
WHAT = "a TraceLab llm_round_trace JSONL"
INPUT_EVENTS = ("user_message", "tool_result")
OUTPUT_EVENTS = ("reasoning", "text", "tool_call")
_SLACK_NS = 1_000_000  # 1 ms, the validator's slack


@register
class TraceLab(Format):
    name = "tracelab"
    description = "TraceLab round JSONL: session_id, round_index, input_tokens_total, prefix_tokens, timing_events (import only)"
    can_export = False

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        return first is not None and {"session_id", "round_index", "input_tokens_total"} <= first.keys()

    def read(self, path: Path, *, block_size: int | None = None, workload: str | None = None, **_: Any):
        bs = block_size or DEFAULT_BLOCK_SIZE
        # session -> [(submitted, end, file order, n_in, prefix, n_out, model, round_index)]
        sessions: dict[str, list[tuple]] = {}
        undated = no_output = 0
        providers: set[str] = set()
        seq = 0
        for f in input_files(path, (".jsonl", ".jsonl.gz", ".json.gz"), WHAT):
            for where, d in json_lines(f, WHAT):
                sid = text(d, "session_id", where, required=True)
                ins, outs = _event_times(d, where)
                if not ins and not outs:
                    undated += 1
                    continue
                submitted = max(ins) if ins else min(outs)
                if not outs:
                    no_output += 1
                end = max(outs) if outs else submitted
                n_in = count(d, "input_tokens_total", where)
                prefix = min(count(d, "prefix_tokens", where, required=False) or 0, n_in)  # type: ignore[type-var]
                providers.add(text(d, "provider", where) or "?")
                sessions.setdefault(sid, []).append((submitted, max(end, submitted), seq, n_in, prefix,  # type: ignore[arg-type]
                                                     count(d, "output_tokens", where), text(d, "model", where) or "",
                                                     count(d, "round_index", where, required=False, bound=2**31)))
                seq += 1
        if not sessions:
            raise FormatError(f"{path}: no rounds with timing events; is this {WHAT}?")
        t0 = min(r[0] for rows in sessions.values() for r in rows)
        blocks = CachedBlocks(bs)
        workflows: list[Workflow] = []
        for sid, rows in sessions.items():
            rows.sort(key=lambda r: (r[0], r[7] or 0, r[2]))
            deps = happens_before([(r[0], r[1]) for r in rows], _SLACK_NS)
            last_of_model: dict[str, list[int]] = {}
            calls: list[Call] = []
            for k, (start, end, _, n_in, prefix, n_out, model, _ri) in enumerate(rows):
                ids = blocks.ids(n_in, prefix, last_of_model.get(model), model)
                last_of_model[model] = ids
                dep_end = max((rows[j][1] for j in deps[k]), default=rows[0][0])
                calls.append(Call(id=f"{sid}.r{k}", node=model or "round", deps=[f"{sid}.r{j}" for j in deps[k]],
                                  wait_s=max(0, start - dep_end) / 1e9, input_tokens=n_in, output_tokens=n_out,
                                  t_issue=(start - t0) / 1e9, t_end=(end - t0) / 1e9, hash_ids=ids))
            workflows.append(Workflow(id=sid, arrival_s=(rows[0][0] - t0) / 1e9, calls=calls))
        workflows.sort(key=lambda w: w.arrival_s)
        notes = [
            "a session is a workflow; a round is issued at its latest user_message/tool_result event and ends at "
            "its last model output event (reasoning, text, tool_call); it depends on the rounds that had ended by "
            "then, and waits the tool and user time since",
            f"prefix_tokens (the provider's cached prefix) become hash_ids of {bs}-token blocks: a round shares the "
            "first prefix_tokens/B blocks of the previous round of its model (a session's first round: of a chain "
            "every session shares); nothing else is known about sharing",
            "sub-agent sessions are not linked to the session that spawned them (the file has no such link): "
            "each is its own workflow",
            "no text, no first-token times (event timestamps are per content block, not per token); not kept: "
            "tools, per-round models (a round's model is its node), provider, project, user",
            f"times are seconds after the first round ({iso_utc(t0)}); providers: {listed(providers)}",
        ]
        if (note := blocks.unplaced_note("round")) is not None:
            notes.append(note)
        if undated:
            notes.append(f"{undated} rounds have no timing events and are left out")
        if no_output:
            notes.append(f"{no_output} rounds have no output event: they end where they start")
        header = import_header(self.name, path, notes, workload=workload, block_size=bs)
        return Trace(header=header, workflows=workflows), notes


def _event_times(d: dict, where: str) -> tuple[list[int], list[int]]:
    events = d.get("timing_events") or []
    if not isinstance(events, list):
        raise FormatError(f"{where}: timing_events must be a list")
    ins: list[int] = []
    outs: list[int] = []
    for e in events:
        if not isinstance(e, dict) or not e.get("timestamp"):
            continue
        kind = e.get("event_type")
        if kind in INPUT_EVENTS or kind in OUTPUT_EVENTS:
            try:
                t = parse_time_ns(e["timestamp"]) if isinstance(e["timestamp"], str) else None
            except ValueError:
                t = None
            if t is None:
                raise FormatError(f"{where}: timing event timestamp {e['timestamp']!r} is not an ISO-8601 date-time")
            (ins if kind in INPUT_EVENTS else outs).append(t)
    return ins, outs


"""GitHub Copilot coding-agent sessions (Azure/AzurePublicDataset, GitHubCopilotCodingAgentDataset2026:
release `ghcp-coding-agent-2026`, `date=YYYY-MM-DD/shard-NNNN.jsonl.gz`): import only.

Gzip JSONL, one agentic session per line (analysis/GitHubCopilotCodingAgents/schema.json):
`{"session_id", "date", "turns": [{"turn_id", "llm_calls": [{"message_id", "timestamp",
"duration_ms", "initiator_type": "user"|"agent", "model": "Model A", "result", "status_code",
"tokens": {"total", "prompt", "completion", "cached", "cached_pct"}, "message_metadata": [{"type",
"role", "sequenceId", "token_len"}]}], "tool_batches": [{"timestamp", "duration_ms",
"auto_continue", "result", "request_id", "function_calls": [{"name", "status", "duration_ms"}]}]}]}`.
A call's `timestamp` is its start (the release's own loader takes end = timestamp +
duration_ms), in ISO-8601; a tool batch's `request_id` is the message_id of the call that
asked for it. No text, only token counts.

Import: a session is a workflow; a file, a shard or a directory of them (the release as
unpacked) is read line by line. A session's LLM calls are chained in start order: each
depends on the calls that had ended when it started (mrw.formats.common.happens_before),
which is the previous call for calls that ran one after another; a call that started while
another was still running (parallel calls) runs beside it and the next call joins both.
A call's wait is the recorded gap since those calls ended: the tool batches the previous
call asked for, the user's time before a user-initiated call, and the client's overhead,
together (trace format v1 has one wait per call). Cached prompt tokens become hash_ids
(mrw.formats.common.CachedBlocks, --block-size, 64 by default): a call shares the first
cached/B blocks of the previous call of its model. The model label is the call's node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrw.formats import Format, FormatError, import_header, register
from mrw.formats.common import (CachedBlocks, count, happens_before, input_files, iso_utc, json_lines, listed,
                                parse_time_ns, seconds, text)
from mrw.trace import Call, Trace, Workflow

DEFAULT_BLOCK_SIZE = 64
WHAT = "a GitHub Copilot coding-agent session JSONL (date=.../shard-NNNN.jsonl.gz)"
_SLACK_NS = 1_000_000  # 1 ms, the validator's slack


class _Stats:
    def __init__(self) -> None:
        self.calls = self.no_prompt = self.untimed = self.no_duration = self.parallel = 0
        self.repeated = self.empty = 0
        self.batches = self.unmatched_batches = 0
        self.tool_s = 0.0
        self.results: dict[str, int] = {}
        self.models: set[str] = set()


@register
class CopilotAgent(Format):
    name = "copilot-agent"
    description = "GitHub Copilot coding-agent sessions (Azure public dataset 2026): JSONL of sessions with llm_calls and tool_batches (import only)"
    can_export = False

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        if first is None:
            return b'"llm_calls"' in head and b'"session_id"' in head
        turns = first.get("turns")
        return "session_id" in first and isinstance(turns, list) and (
            not turns or (isinstance(turns[0], dict) and "llm_calls" in turns[0]))

    def read(self, path: Path, *, block_size: int | None = None, workload: str | None = None, **_: Any):
        bs = block_size or DEFAULT_BLOCK_SIZE
        st = _Stats()
        blocks = CachedBlocks(bs)
        workflows: list[Workflow] = []
        seen: dict[str, int] = {}  # session_id -> records read with it
        origin: int | None = None  # ns of the first call read; times are kept relative to it
        earliest: int | None = None
        for f in input_files(path, (".jsonl.gz", ".jsonl"), WHAT):
            for where, d in json_lines(f, WHAT):
                sid = text(d, "session_id", where, required=True)
                k = seen[sid] = seen.get(sid, 0) + 1  # type: ignore[index]
                if k > 1:  # a session in two records (one on each side of a date partition)
                    st.repeated += 1
                    sid = f"{sid}~{k}"
                calls = _calls(d, where, st)
                if not calls:
                    st.empty += 1
                    continue
                if origin is None:
                    origin = calls[0][0]
                earliest = min(earliest if earliest is not None else calls[0][0], calls[0][0])
                workflows.append(_workflow(sid, d, calls, origin, blocks, st))  # type: ignore[arg-type]
        if not workflows:
            raise FormatError(f"{path}: no sessions with timed LLM calls; is this {WHAT}?")
        if earliest < origin:  # type: ignore[operator]
            shift = (origin - earliest) / 1e9  # type: ignore[operator]
            for w in workflows:
                w.arrival_s = round(w.arrival_s + shift, 9)
                for c in w.calls:
                    c.t_issue = round(c.t_issue + shift, 9)  # type: ignore[operator]
                    c.t_end = round(c.t_end + shift, 9)  # type: ignore[operator]
        workflows.sort(key=lambda w: w.arrival_s)
        notes = [
            "a session is a workflow; its LLM calls are chained in start order (a call depends on the calls that had "
            "ended when it started, so parallel calls stay parallel)",
            f"waits are the recorded gaps between calls: tool batches ({st.batches} batches, {st.tool_s:,.1f} s in all), "
            "the user's time before user-initiated calls and client overhead together (one wait per call in "
            "trace format v1)",
            f"cached prompt tokens become hash_ids of {bs}-token blocks: a call shares the first cached/B blocks of "
            "the previous call of its model (a session's first call to a model: of a chain every session shares)",
            "no text; not kept: message_metadata (prompt segment types and sizes), tool names and statuses, "
            "turn ids and message ids (turn and call order are in the call id <session>.t<turn>.c<call>)",
            f"the model label is the call's node; replay uses the served model for every call "
            f"(labels: {listed(st.models)})",
            f"times are seconds after the first call ({iso_utc(earliest)})",  # type: ignore[arg-type]
        ]
        if st.parallel:
            notes.append(f"{st.parallel} calls started while an earlier call of their session was still running: "
                         "they run beside it")
        if (note := blocks.unplaced_note("call")) is not None:
            notes.append(note)
        if st.no_prompt:
            notes.append(f"{st.no_prompt} LLM calls with 0 prompt tokens are left out (as the release's own analyses "
                         "leave them out)")
        if st.repeated:
            notes.append(f"{st.repeated} records repeat a session_id (a session on both sides of a date partition): "
                         "each is a workflow of its own, <session_id>~2, ~3, ...")
        if st.empty:
            notes.append(f"{st.empty} sessions have no LLM call with a timestamp and prompt tokens: left out")
        if st.untimed:
            notes.append(f"{st.untimed} LLM calls without a readable timestamp are left out")
        if st.no_duration:
            notes.append(f"{st.no_duration} LLM calls without duration_ms end where they start")
        if st.unmatched_batches:
            notes.append(f"{st.unmatched_batches} tool batches name a request_id that is no call of their turn")
        other = {k: v for k, v in st.results.items() if k != "Success"}
        if other:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(other.items(), key=lambda kv: -kv[1])[:5])
            notes.append(f"calls whose result is not Success are replayed with their recorded token counts ({shown})")
        header = import_header(self.name, path, notes, workload=workload, block_size=bs)
        return Trace(header=header, workflows=workflows), notes


def _calls(d: dict, where: str, st: _Stats) -> list[tuple]:
    """The session's LLM calls as (start ns, end ns, turn, call, prompt, completion, cached, model), start order."""
    turns = d.get("turns")
    if not isinstance(turns, list):
        raise FormatError(f"{where}: 'turns' must be a list; is this {WHAT}?")
    out: list[tuple] = []
    for ti, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FormatError(f"{where}: turns[{ti}] must be an object")
        calls, batches = turn.get("llm_calls") or [], turn.get("tool_batches") or []
        if not isinstance(calls, list) or not isinstance(batches, list):
            raise FormatError(f"{where}: turns[{ti}]: llm_calls and tool_batches must be lists")
        ids = set()
        for ci, c in enumerate(calls):
            cw = f"{where} turns[{ti}].llm_calls[{ci}]"
            if not isinstance(c, dict):
                raise FormatError(f"{cw}: must be an object")
            st.calls += 1
            ids.add(text(c, "message_id", cw))
            tokens = c.get("tokens")
            if not isinstance(tokens, dict):
                raise FormatError(f"{cw}: 'tokens' must be an object with prompt, completion, cached")
            prompt = count(tokens, "prompt", cw)
            if not prompt:
                st.no_prompt += 1
                continue
            try:
                start = parse_time_ns(c["timestamp"]) if isinstance(c.get("timestamp"), str) else None
            except ValueError:
                start = None
            if start is None:
                st.untimed += 1
                continue
            dur = seconds(c, "duration_ms", cw, unit="ms")
            if dur is None:
                st.no_duration += 1
            model = text(c, "model", cw) or "?"
            st.models.add(model)
            result = text(c, "result", cw)
            if result is not None:
                st.results[result] = st.results.get(result, 0) + 1
            end = start + max(0, round((dur or 0.0) * 1e6))
            out.append((start, end, ti, ci, prompt, count(tokens, "completion", cw),
                        min(count(tokens, "cached", cw, required=False) or 0, prompt), model))  # type: ignore[type-var]
        for bi, b in enumerate(batches):
            bw = f"{where} turns[{ti}].tool_batches[{bi}]"
            if not isinstance(b, dict):
                raise FormatError(f"{bw}: must be an object")
            if not b.get("function_calls"):
                continue  # as the release's loader: a batch without function calls ran nothing
            st.batches += 1
            st.tool_s += max(0.0, seconds(b, "duration_ms", bw, unit="ms") or 0.0) / 1000
            if text(b, "request_id", bw) not in ids:
                st.unmatched_batches += 1
    out.sort(key=lambda r: (r[0], r[2], r[3]))
    return out


def _workflow(sid: str, d: dict, calls: list[tuple], origin: int, blocks: CachedBlocks, st: _Stats) -> Workflow:
    deps = happens_before([(r[0], r[1]) for r in calls], _SLACK_NS)
    ids = [f"{sid}.t{r[2]}.c{r[3]}" for r in calls]
    last_of_model: dict[str, list[int]] = {}
    out: list[Call] = []
    running_until = calls[0][0]  # the latest end of the calls before this one
    for k, (start, end, _ti, _ci, prompt, completion, cached, model) in enumerate(calls):
        st.parallel += start + _SLACK_NS < running_until
        running_until = max(running_until, end)
        hids = blocks.ids(prompt, cached, last_of_model.get(model), model)
        last_of_model[model] = hids
        since = max((calls[j][1] for j in deps[k]), default=calls[0][0])
        out.append(Call(id=ids[k], node=model, deps=[ids[j] for j in deps[k]], wait_s=max(0, start - since) / 1e9,
                        input_tokens=prompt, output_tokens=completion, t_issue=(start - origin) / 1e9,
                        t_end=(end - origin) / 1e9, hash_ids=hids))
    tags = {"date": d["date"]} if isinstance(d.get("date"), str) and len(d["date"]) <= 32 else {}
    return Workflow(id=sid, arrival_s=(calls[0][0] - origin) / 1e9, calls=out, tags=tags)

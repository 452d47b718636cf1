"""OpenTelemetry GenAI spans, in the JSON form inference-perf's OTel trace replay reads.

One JSON file per trace: `{"trace_id", "span_count", "collected_at", "spans": [span...]}`,
a span being `{"trace_id", "span_id", "parent_span_id", "name": "chat <model>",
"start_time"/"end_time": ISO-8601, "status": {"code"}, "attributes": {...}}` with the GenAI
semantic-convention attributes `gen_ai.operation.name` ("chat"), `gen_ai.request.model`,
`gen_ai.input.messages` / `gen_ai.output.messages` (JSON strings), `gen_ai.usage.input_tokens`
/ `output_tokens`, `gen_ai.request.max_tokens` / `temperature`. A span is an LLM call when
its operation is "chat" (or its name starts with "chat ") and it has input messages, the
rule inference-perf applies.

Export writes one file per workflow into a directory and adds `mrw.*` attributes (workflow,
call id, node, deps, wait) so that an mrw -> OTel -> mrw round trip keeps the DAG exactly;
other readers ignore them. Import without those attributes infers dependencies the way
mrw's recorder does: a call depends on an earlier, finished call whose output text appears
verbatim in its prompt, and the prompt is split into segments around it. Nothing else is
inferred: calls that merely follow each other in time stay independent.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from mrw.formats import Format, FormatError, import_header, issue_time, register, text_messages
from mrw.trace import Call, Message, Trace, Workflow

MIN_REF_CHARS = 24  # shorter outputs ("OK", "yes") match by accident, not by dependency
ROLES = {"system", "user", "assistant", "tool", "developer"}


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_iso(s: Any, where: str) -> float:
    if not isinstance(s, str):
        raise FormatError(f"{where}: start_time/end_time must be ISO-8601 strings, not {s!r}")
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(f"{where}: cannot read time {s!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _content_text(m: dict) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    parts = c if isinstance(c, list) else m.get("parts") or []
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, dict) and p.get("type", "text") == "text":
            out.append(str(p.get("content", p.get("text", "")) or ""))
    return "".join(out)


def _json_attr(v: Any, where: str) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            raise FormatError(f"{where}: attribute is not valid JSON") from None
    return v


def _split_on_outputs(text: str, cands: list[tuple[str, str]]) -> tuple[list[dict], set[str]]:
    """Segments of `text` with every verbatim occurrence of a candidate output as a ref."""
    segs: list[dict] = [{"text": text}]
    used: set[str] = set()
    for cid, out in sorted(cands, key=lambda x: -len(x[1])):  # longest first: a long output wins over its parts
        nxt: list[dict] = []
        for s in segs:
            if "ref" in s or out not in s["text"]:
                nxt.append(s)
                continue
            pieces = s["text"].split(out)
            for i, piece in enumerate(pieces):
                if piece:
                    nxt.append({"text": piece})
                if i < len(pieces) - 1:
                    nxt.append({"ref": cid})
            used.add(cid)
        segs = nxt
    return segs, used


@register
class OTel(Format):
    name = "otel"
    description = "OpenTelemetry GenAI spans, JSON per trace as inference-perf reads them (a file or a directory)"

    # ------------------------------------------------------------------ import

    def looks_like(self, head: bytes, first: dict | None) -> bool:
        return b'"spans"' in head and b"gen_ai." in head

    def read(self, path: Path, *, tokenizer: Any = None, workload: str | None = None, **_: Any):
        files = sorted(p for p in path.iterdir() if p.suffix == ".json") if path.is_dir() else [path]
        if not files:
            raise FormatError(f"{path}: no .json trace files")
        traces: list[tuple[str, list[dict]]] = []
        collected: list[Any] = []
        for f in files:
            try:
                doc = orjson.loads(f.read_bytes())
            except orjson.JSONDecodeError as e:
                raise FormatError(f"{f}: not JSON ({e.msg})") from None
            docs = doc if isinstance(doc, list) else [doc]
            for d in docs:
                if not isinstance(d, dict) or not isinstance(d.get("spans"), list):
                    raise FormatError(f"{f}: expected an object with a 'spans' list (inference-perf's OTel JSON)")
                spans = [s for s in d["spans"] if isinstance(s, dict) and self._is_llm(s)]
                if spans:
                    collected.append(d.get("collected_at"))
                    traces.append((str(d.get("trace_id") or d.get("session_id") or f.stem), spans))
        if not traces:
            raise FormatError(f"{path}: no LLM spans (gen_ai.operation.name 'chat' with gen_ai.input.messages)")
        t0 = min(_parse_iso(s.get("start_time"), str(path)) for _, spans in traces for s in spans)
        # mrw's own export puts the trace's time zero at collected_at; other producers
        # collect after the spans ended, so the first span is time zero for them.
        starts = [_parse_iso(c, str(path)) for c in collected if isinstance(c, str)]
        if starts and len(starts) == len(collected) and max(starts) <= t0 + 1e-6:
            t0 = min(starts)
        notes: list[str] = ["no hash_ids: prefix sharing is measured from the text"]
        inferred = counted = 0
        workflows: list[Workflow] = []
        used_ids: set[str] = set()
        models: set[str] = set()
        for tid, spans in traces:
            spans.sort(key=lambda s: (_parse_iso(s.get("start_time"), tid), str(s.get("span_id", ""))))
            have_mrw = all("mrw.call.id" in (s.get("attributes") or {}) for s in spans)
            calls: list[Call] = []
            arrival = None
            wid = tid
            ends: dict[str, float] = {}
            for s in spans:
                a = s.get("attributes") or {}
                where = f"{tid}/{s.get('span_id')}"
                start = _parse_iso(s.get("start_time"), where) - t0
                end = _parse_iso(s.get("end_time"), where) - t0 if s.get("end_time") else None
                if have_mrw:
                    wid = str(a.get("mrw.workflow.id", tid))
                    if arrival is None and "mrw.workflow.arrival_s" in a:
                        arrival = float(a["mrw.workflow.arrival_s"])
                if a.get("gen_ai.request.model"):
                    models.add(str(a["gen_ai.request.model"]))
                raw_msgs = _json_attr(a.get("gen_ai.input.messages"), where)
                if not isinstance(raw_msgs, list):
                    raise FormatError(f"{where}: gen_ai.input.messages must be a list of messages")
                msgs = []
                for m in raw_msgs:
                    if not isinstance(m, dict):
                        raise FormatError(f"{where}: a message is not an object")
                    role = m.get("role", "user")
                    msgs.append((role if role in ROLES else "user", _content_text(m)))
                out_msgs = a.get("gen_ai.output.messages")
                output = None
                if out_msgs is not None:
                    om = _json_attr(out_msgs, where)
                    if isinstance(om, list) and om and isinstance(om[0], dict):
                        output = _content_text(om[0])
                for k in ("gen_ai.output.text", "gen_ai.completion"):
                    if isinstance(a.get(k), str):
                        output = a[k]
                n_in = a.get("gen_ai.usage.input_tokens", a.get("gen_ai.usage.prompt_tokens"))
                n_out = a.get("gen_ai.usage.output_tokens", a.get("gen_ai.usage.completion_tokens"))
                cid = str(a.get("mrw.call.id") or s.get("span_id") or f"{tid}.{len(calls)}")
                if cid in used_ids:
                    cid = f"{tid}.{cid}"
                used_ids.add(cid)
                if n_in is None:
                    if tokenizer is None:
                        raise FormatError(
                            f"{where}: no gen_ai.usage.input_tokens; pass --tokenizer DIR to count the prompt's tokens"
                        )
                    ids = tokenizer.apply_chat_template([{"role": r, "content": t} for r, t in msgs], tokenize=True, add_generation_prompt=True)
                    n_in = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
                    counted += 1
                if n_out is None:
                    if output is None or tokenizer is None:
                        raise FormatError(f"{where}: no gen_ai.usage.output_tokens (and no output text and tokenizer to count)")
                    n_out = len(tokenizer.encode(output, add_special_tokens=False))
                    counted += 1
                sampling = {}
                if isinstance(a.get("gen_ai.request.temperature"), (int, float)):
                    sampling["temperature"] = float(a["gen_ai.request.temperature"])
                if isinstance(a.get("gen_ai.request.top_p"), (int, float)):
                    sampling["top_p"] = float(a["gen_ai.request.top_p"])
                if isinstance(a.get("gen_ai.request.max_tokens"), int) and a["gen_ai.request.max_tokens"] >= 1:
                    sampling["max_tokens"] = a["gen_ai.request.max_tokens"]
                c = Call(
                    id=cid,
                    node=str(a.get("mrw.call.node") or a.get("gen_ai.agent.name") or "chat"),
                    input_tokens=int(n_in),
                    output_tokens=int(n_out),
                    messages=[Message(r, [{"text": t}]) for r, t in msgs],
                    sampling=sampling,
                    t_issue=round(start, 6),
                    t_end=round(end, 6) if end is not None else None,
                    output=output,
                )
                if have_mrw:
                    c.deps = [str(d) for d in a.get("mrw.call.deps") or []]
                    c.wait_s = float(a.get("mrw.call.wait_s", 0.0))
                else:
                    # verbatim outputs of earlier, finished calls of this trace
                    cands = [(p.id, p.output) for p in calls
                             if p.output and len(p.output) >= MIN_REF_CHARS and p.id in ends and ends[p.id] <= start + 1e-6]
                    deps: set[str] = set()
                    for m in c.messages or []:
                        m.content, used = _split_on_outputs(m.content[0]["text"], cands)
                        if not m.content:
                            m.content = [{"text": ""}]
                        deps |= used
                    c.deps = [p.id for p in calls if p.id in deps]
                    if c.deps:
                        inferred += 1
                    last = max((ends[d] for d in c.deps), default=None)
                    c.wait_s = max(0.0, round(start - last, 6)) if last is not None else 0.0
                if end is not None:
                    ends[c.id] = end
                calls.append(c)
            if have_mrw:
                # mrw.* refs are rebuilt from text too, but only among the declared deps
                outs = {p.id: p.output for p in calls if p.output and len(p.output) >= MIN_REF_CHARS}
                for c in calls:
                    cands = [(d, outs[d]) for d in c.deps if d in outs]
                    for m in c.messages or []:
                        m.content, _ = _split_on_outputs(m.content[0]["text"], cands) if cands else (m.content, None)
                        if not m.content:
                            m.content = [{"text": ""}]
            if arrival is None:
                arrival = min(c.t_issue for c in calls)  # type: ignore[type-var]
                for c in calls:
                    if not c.deps and c.t_issue is not None:
                        c.wait_s = max(0.0, round(c.t_issue - arrival, 6)) if not have_mrw else c.wait_s
            workflows.append(Workflow(id=wid, arrival_s=max(0.0, round(arrival, 6)), calls=calls))
        if not all("mrw.call.id" in (s.get("attributes") or {}) for _, spans in traces for s in spans):
            notes.insert(0, f"dependencies inferred from text: {inferred} calls contain an earlier call's output verbatim; "
                            "calls that only follow in time are independent")
            notes.append("one workflow per trace; no first-token times")
        if counted:
            notes.append(f"{counted} token counts were missing and counted with the given tokenizer")
        ra = {"model": sorted(models)[0]} if len(models) == 1 else {}
        header = import_header(self.name, path, notes, workload=workload, recorded_against=ra)
        return Trace(header=header, workflows=workflows), notes

    @staticmethod
    def _is_llm(s: dict) -> bool:
        a = s.get("attributes") or {}
        op = a.get("gen_ai.operation.name")
        return (op == "chat" or str(s.get("name", "")).startswith("chat ")) and bool(a.get("gen_ai.input.messages"))

    # ------------------------------------------------------------------ export

    def write(self, trace: Trace, path: Path, *, tokenizer: Any = None, **_: Any) -> list[str]:
        from mrw.trace import write_atomic

        if path.suffix == ".json":
            raise FormatError(f"{path}: OTel export writes one file per workflow; give a directory")
        path.mkdir(parents=True, exist_ok=True)
        try:
            base = datetime.fromisoformat(trace.header.created.replace("Z", "+00:00"))
        except ValueError:
            base = datetime(2000, 1, 1, tzinfo=timezone.utc)
        if base.tzinfo is None:
            base = base.replace(tzinfo=timezone.utc)
        model = trace.header.recorded_against.get("model") or "unknown"
        synthesized = 0
        for w in trace.workflows:
            tid = secrets.token_hex(16)
            spans = []
            for c in w.calls:
                msgs = text_messages(trace, c, tokenizer, trace.header.block_size, "OTel export")
                if not c.has_text:
                    synthesized += 1
                t_i = issue_time(w.arrival_s, c)
                t_e = c.t_end if c.t_end is not None else t_i
                attrs: dict[str, Any] = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": model,
                    "gen_ai.input.messages": json.dumps(msgs, ensure_ascii=False),
                    "gen_ai.usage.input_tokens": c.input_tokens,
                    "gen_ai.usage.output_tokens": c.output_tokens,
                    "gen_ai.request.max_tokens": c.output_tokens or 1,
                    "mrw.workflow.id": w.id,
                    "mrw.workflow.arrival_s": w.arrival_s,
                    "mrw.call.id": c.id,
                    "mrw.call.node": c.node,
                    "mrw.call.deps": list(c.deps),
                    "mrw.call.wait_s": c.wait_s,
                }
                if c.output is not None:
                    attrs["gen_ai.output.messages"] = json.dumps(
                        [{"role": "assistant", "parts": [{"type": "text", "content": c.output}], "finish_reason": "length"}],
                        ensure_ascii=False,
                    )
                for k in ("temperature", "top_p"):
                    if k in c.sampling:
                        attrs[f"gen_ai.request.{k}"] = c.sampling[k]
                spans.append({
                    "trace_id": tid,
                    "span_id": secrets.token_hex(8),
                    "parent_span_id": None,
                    "name": f"chat {model}",
                    "kind": "SPAN_KIND_CLIENT",
                    "start_time": _iso(base + timedelta(seconds=t_i)),
                    "end_time": _iso(base + timedelta(seconds=t_e)),
                    "status": {"code": 0},
                    "attributes": attrs,
                })
            doc = {"trace_id": tid, "span_count": len(spans), "collected_at": _iso(base), "spans": spans}
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in w.id)
            write_atomic(path / f"{safe}.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        notes = [
            "mrw.* span attributes carry the DAG (deps, wait_s, node); other readers infer dependencies from text",
            "lost: first-token times (spans have start and end only), hash_ids",
        ]
        if synthesized:
            notes.append(f"{synthesized} text-free calls got synthetic text from their hash_ids (mrw.synth)")
        if any(c.t_end is None for _, c in trace.calls()):
            notes.append("calls without a recorded end time have end_time = start_time")
        return notes

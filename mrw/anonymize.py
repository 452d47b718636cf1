"""Anonymisation: a trace without any text that still replays like the original.

What performance depends on is kept: every call's input/output token counts, the DAG (deps,
wait_s), the recorded timings, and prefix sharing. Prefix sharing survives as `hash_ids`:
the prompt's token ids (as the engine saw them: the recorded model's tokenizer and chat
template) are cut into `block_size`-token blocks and each block gets a salted, chained hash
(`mrw.prefix.block_hashes`), the method of the public Mooncake and agentic-coding traces.
Two calls that shared a k-block token prefix share their first k hashes, and nothing else
about the text can be recovered: the salt is random per run and is not kept, so a block's
hash cannot be matched against a guessed text.

Why a tokenizer is required: prefix caches share whole *token* blocks. Hashing characters
would place block boundaries at different points than the engine does, so sharing measured
or replayed from character blocks would differ from the original's. Without the recorded
model's tokenizer, `anonymize` refuses rather than write hashes that look right and are not.

Removed as well: the header's free text (description), generator parameters that are not
plain numbers/flags/short names (paths, URLs, long strings), every `recorded_against` field
but engine/engine_version/model/tokenizer (model and tokenizer paths are cut to their last
component), `sampling.stop` strings, workflow tags that are not plain scalars, and the ids
of workflows and calls (renamed w0, w0.c0, ...; the DAG is rebuilt on the new ids). What was
removed is listed, by field name only, in `header.extra.anonymized`.
"""

from __future__ import annotations

import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrw.errors import MrwError
from mrw.prefix import block_hashes
from mrw.trace import Call, Header, Trace, Workflow, new_header

DEFAULT_BLOCK_SIZE = 16  # vLLM's KV block on GPUs: sharing survives at the cache's own grain
KEEP_RECORDED_AGAINST = ("engine", "engine_version", "model", "tokenizer")
_PATHLIKE = re.compile(r"[/\\]|://|^~|^\.")


class AnonymizeError(MrwError):
    """The trace cannot be anonymised as asked (no tokenizer, no text, missing outputs)."""


def load_tokenizer(path: str | Path):
    """A Hugging Face tokenizer from a local directory; never downloads."""
    p = Path(path)
    if not p.is_dir():
        raise AnonymizeError(f"{p}: no such tokenizer directory; pass the local directory of the model's tokenizer")
    try:
        from transformers import AutoTokenizer
    except ImportError:  # pragma: no cover - transformers ships with the vllm extra
        raise AnonymizeError("anonymize needs the `transformers` package to tokenize; pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # transformers raises many types for a bad directory
        raise AnonymizeError(f"{p}: cannot load a tokenizer from it ({type(e).__name__}: {e})") from None


def prompt_token_ids(call: Call, outputs: dict[str, str], tokenizer) -> list[int]:
    """The token ids the engine saw for this call: the chat template applied to the
    rendered messages (as vLLM's chat endpoint does), or the completions prompt encoded
    with the tokenizer's special tokens (as vLLM's completions endpoint does)."""
    missing = [r for r in call.refs() if r not in outputs]
    if missing:
        raise AnonymizeError(
            f"call {call.id}: its prompt splices the output of {missing[0]!r}, which the trace did not keep; "
            "anonymise a trace recorded with outputs"
        )
    if call.messages is not None:
        msgs = call.render_messages(outputs)
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            if hasattr(ids, "keys"):  # transformers >= 5 may return a BatchEncoding
                ids = ids["input_ids"]
            return list(ids)
        return list(tokenizer(call.render_prompt(outputs))["input_ids"])
    if call.prompt is not None:
        return list(tokenizer(call.render_prompt(outputs))["input_ids"])
    raise AnonymizeError(f"call {call.id}: has no prompt text to tokenize (already anonymised?)")


@dataclass(slots=True)
class AnonymizeReport:
    calls: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    token_count_mismatches: int = 0  # calls whose re-tokenised length != recorded input_tokens
    max_token_count_diff: int = 0
    removed: list[str] = field(default_factory=list)


def _scalar_ok(v: Any) -> bool:
    if isinstance(v, bool) or v is None or isinstance(v, (int, float)):
        return True
    return isinstance(v, str) and len(v) <= 64 and not _PATHLIKE.search(v)


def _clean_header(h: Header, block_size: int, tokenizer_name: str | None, report: AnonymizeReport) -> Header:
    removed = report.removed
    params = h.generator.get("params") or {}
    kept_params = {}
    for k, v in params.items():
        if _scalar_ok(v):
            kept_params[k] = v
        else:
            removed.append(f"generator.params.{k}")
    gen = {k: h.generator[k] for k in ("name", "seed") if k in h.generator}
    if kept_params:
        gen["params"] = kept_params
    for k in h.generator:
        if k not in ("name", "seed", "params"):
            removed.append(f"generator.{k}")
    ra: dict[str, Any] = {}
    for k, v in h.recorded_against.items():
        if k in KEEP_RECORDED_AGAINST and v is not None:
            s = str(v)
            ra[k] = Path(s.rstrip("/")).name if _PATHLIKE.search(s) else s
        else:
            removed.append(f"recorded_against.{k}")
    if h.description:
        removed.append("description")
    extra: dict[str, Any] = {}
    for k in h.extra:
        if k == "import":  # written by mrw.formats: what a source format could not express
            extra[k] = h.extra[k]
        else:
            removed.append(f"extra.{k}")
    extra["anonymized"] = {
        "block_size": block_size,
        "tokenizer": tokenizer_name,
        "salt": "random per run, not kept",
        "removed": sorted(set(removed)),
        "ids": "workflow and call ids renamed; deps rebuilt on the new ids",
    }
    out = new_header(h.workload, generator=gen, recorded_against=ra, block_size=block_size, extra=extra)
    out.created = h.created or out.created
    return out


def anonymize(
    trace: Trace,
    tokenizer,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    salt: bytes | None = None,
    tokenizer_name: str | None = None,
) -> tuple[Trace, AnonymizeReport]:
    """A text-free copy of `trace` with hash_ids; see the module docstring for what goes."""
    if block_size < 1:
        raise AnonymizeError(f"block size must be >= 1, not {block_size}")
    if tokenizer is None:
        want = trace.header.recorded_against.get("tokenizer") or trace.header.recorded_against.get("model") or "?"
        raise AnonymizeError(
            f"anonymize needs the tokenizer the trace was recorded with ({want}); pass --tokenizer DIR "
            "(a local Hugging Face tokenizer directory). Hashing characters instead would not preserve "
            "token-block prefix sharing, so mrw refuses."
        )
    salt = secrets.token_bytes(16) if salt is None else salt
    report = AnonymizeReport(block_size=block_size)
    outputs = trace.recorded_outputs()
    workflows: list[Workflow] = []
    for wi, w in enumerate(trace.workflows):
        ids = {c.id: f"w{wi}.c{ci}" for ci, c in enumerate(w.calls)}
        calls: list[Call] = []
        for c in w.calls:
            if not c.has_text:
                raise AnonymizeError(f"call {c.id}: has no text; the trace is already anonymised or was imported without text")
            toks = prompt_token_ids(c, outputs, tokenizer)
            report.calls += 1
            diff = abs(len(toks) - c.input_tokens)
            if diff:
                report.token_count_mismatches += 1
                report.max_token_count_diff = max(report.max_token_count_diff, diff)
            sampling = {k: v for k, v in c.sampling.items() if k != "stop"}
            if "stop" in c.sampling:
                report.removed.append("calls.sampling.stop")
            calls.append(
                Call(
                    id=ids[c.id],
                    node=c.node,
                    deps=[ids[d] for d in c.deps],
                    wait_s=c.wait_s,
                    input_tokens=c.input_tokens,
                    output_tokens=c.output_tokens,
                    sampling=sampling,
                    t_issue=c.t_issue,
                    t_first_token=c.t_first_token,
                    t_end=c.t_end,
                    hash_ids=block_hashes(toks, block_size, salt),
                )
            )
        tags = {k: v for k, v in w.tags.items() if _scalar_ok(v)}
        report.removed.extend(f"workflows.tags.{k}" for k in w.tags if k not in tags)
        workflows.append(Workflow(id=f"w{wi}", arrival_s=w.arrival_s, calls=calls, tags=tags))
    header = _clean_header(trace.header, block_size, tokenizer_name, report)
    header.extra["anonymized"]["token_count_mismatches"] = report.token_count_mismatches
    return Trace(header=header, workflows=workflows), report


def anonymize_file(
    src: str | Path,
    dst: str | Path,
    *,
    tokenizer_dir: str | Path | None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> AnonymizeReport:
    """Read, anonymise, validate and write; the output never holds a byte of prompt text."""
    from mrw import trace as tr
    from mrw import validate as v

    trace = tr.load(src)
    tok = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    name = trace.header.recorded_against.get("tokenizer") or trace.header.recorded_against.get("model")
    if tokenizer_dir is not None and not name:
        name = Path(str(tokenizer_dir).rstrip("/")).name
    anon, report = anonymize(trace, tok, block_size=block_size, tokenizer_name=Path(str(name)).name if name else None)
    doc = anon.to_dict()
    v.raise_if_problems(v.check(doc), str(dst))
    tr.dump(anon, dst)
    if report.token_count_mismatches:
        print(
            f"mrw: note: {report.token_count_mismatches} of {report.calls} calls re-tokenise to a length other "
            f"than their recorded input_tokens (up to {report.max_token_count_diff} tokens apart); the recorded "
            "counts are kept. Is --tokenizer the model the trace was recorded with?",
            file=sys.stderr,
        )
    return report

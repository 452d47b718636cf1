"""Length knobs on a trace: scale output and input lengths, deterministically.

The study varies input and output length as energy knobs. A sweep point asks for a trace
whose calls generate `out_scale` times as many tokens and whose prompts carry `in_scale`
times as much text of their own, with everything else (workflows, DAG, waits, arrivals,
prefix sharing, references) kept. `scale_trace` makes such a trace; the same inputs always
give the same bytes, so a resumed sweep rebuilds the identical trace.

Output length (`out_scale`)
  - `output_tokens` becomes `max(1, round(output_tokens * out_scale))`; a recorded
    `sampling.max_tokens` follows it (the replayer forces this length exactly);
  - the recorded `output` text is resized in proportion (characters, see *Resizing text*),
    because downstream prompts splice it through `{"ref": ...}`: a summary that is half as
    long in the replay is also half as long in the next prompt that quotes it.

Input length (`in_scale`)
  - every literal `{"text": ...}` segment of every prompt (all messages, system included,
    or the completions prompt) is resized to `in_scale` times its length;
  - `{"ref": ...}` segments are left alone: they carry upstream outputs, whose length is
    `out_scale`'s business. So in a refine chain with in=2, out=1, each prompt's instructions
    and document chunk double while the running summary it quotes keeps its length.
  - token-only traces (no text, `hash_ids`): `input_tokens` is scaled and `hash_ids` cut to
    the new block count, or extended with new chained hashes (derived from the last one, so
    two calls that shared every block still share every block).

Resizing text (one function, `resize_text`, for segments and outputs alike)
  - shortening keeps the beginning and drops whole words from the end: the text is cut at
    the last whitespace at or before `ratio * len` (at the exact character if that would
    drop more than half of what is kept);
  - lengthening appends deterministic filler: English words drawn from a fixed list by a
    PRNG seeded with a hash of the text itself, until the new length is reached;
  - so the result depends only on (text, ratio): identical segments stay identical, and a
    prefix two prompts share inside one segment stays shared (cuts keep prefixes; filler
    goes after the tail where they already differ). Prefix-cache behaviour is preserved.

Token counts
  - `input_tokens` is recounted exactly when a token counter for the trace's tokenizer is
    given (`hf_token_counter(model_dir)`: the model's own tokenizer and chat template, as
    vLLM applies them). Without one it is estimated: the recorded count plus the change in
    characters at the call's own characters-per-token rate. The header says which.

Copies (`replicate`): more load of the same shape
  - The study loads a GPU with tens of concurrent workflows; a recorded trace has a few.
    `replicate(trace, k)` makes k copies of every workflow (ids suffixed `~1`, `~2`, ...;
    copy 0 is the original), each copy arriving `stagger_s` after the previous one.
  - Copies must not share more than separate workflows of the workload would. Text that
    several source workflows share (a copilot's system prompt, an instruction template) is
    kept, so copies share it too; text that only one source workflow has (its document
    chunk, its query, its recorded outputs) gets a short copy tag in front (`[copy 3] `) in
    copies 1.., so a prefix cache sees copy 3 diverge exactly where workflow 3 would. In a
    text-free trace, a hash id that only one source workflow uses is re-derived per copy.
    A single-workflow trace has nothing "shared": all of its text is tagged.
  - `input_tokens` grows by the tag's tokens, estimated from the call's characters per
    token (or recounted, with a token counter).

Provenance goes to `header.extra["transform"]`: the scales (composed when a transformed
trace is transformed again), copies, the source trace's sha256 and how tokens were counted.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from mrw.trace import Call, Trace

TRANSFORM_VERSION = 1

# Plain, common words: filler a tokenizer handles like ordinary prose (about 1.3 tokens a word).
_WORDS = (
    "the of and to in is was for that on as with by at from this be are an or it which have "
    "not had were has their one been all there other more would when also two after first new "
    "time some these can may into only over such most many years made about could between "
    "through during before where while under three same being both each part then because "
    "those since well still own year work water long found place city world state small "
    "report river house group early large number system order line point family field later "
    "area public local general known given several record market light table paper "
    "plan study result level method value energy power model measure request answer question"
).split()


def _seed(text: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}\x00{text}".encode(), digest_size=8).digest(), "big")


def filler(n_chars: int, key: str) -> str:
    """`n_chars` characters of deterministic word filler for the text `key` (starts with a space)."""
    if n_chars <= 0:
        return ""
    rng = random.Random(_seed(key, "mrw-filler"))
    parts: list[str] = []
    size = 0
    while size < n_chars:
        w = rng.choice(_WORDS)
        parts.append(" " + w)
        size += len(w) + 1
    s = "".join(parts)
    return s[:n_chars]


def resize_text(text: str, ratio: float) -> str:
    """`text` resized to about `ratio` times its length (see the module docstring)."""
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    n = len(text)
    target = round(n * ratio)
    if target == n or n == 0:
        return text
    if target < n:
        if target <= 0:
            return ""
        cut = max(text.rfind(" ", 0, target + 1), text.rfind("\n", 0, target + 1))
        if cut < target // 2 or cut <= 0:
            cut = target
        return text[:cut]
    return text + filler(target - n, text)


def scaled_tokens(n: int, scale: float) -> int:
    """A token count scaled and rounded, never below 1 for a count that was positive."""
    if n <= 0:
        return n
    return max(1, round(n * scale))


def extend_hashes(hashes: list[int], n_blocks: int) -> list[int]:
    """Cut or extend chained block hashes to `n_blocks`; extensions chain from the last hash
    (the same derivation for equal lists, so shared prefixes stay shared)."""
    if n_blocks <= len(hashes):
        return list(hashes[:n_blocks])
    out = list(hashes)
    prev = (out[-1] if out else 0).to_bytes(8, "big")
    while len(out) < n_blocks:
        h = hashlib.blake2b(prev + b"|mrw-extend", digest_size=8).digest()
        out.append(int.from_bytes(h, "big") >> 1)
        prev = h
    return out


# A token counter: (call, ref texts) -> the prompt's token count as the engine will see it.
TokenCounter = Callable[[Call, Mapping[str, str]], int]


def hf_token_counter(model_dir: str) -> TokenCounter:
    """Counts prompt tokens with a Hugging Face tokenizer folder the way vLLM's server does:
    chat messages through the chat template with the generation prompt, completions prompts
    with the tokenizer's special tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def count(call: Call, outputs: Mapping[str, str]) -> int:
        if call.messages is not None:
            ids = tok.apply_chat_template(call.render_messages(outputs), add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        return len(tok(call.render_prompt(outputs))["input_ids"])

    return count


@dataclass(frozen=True, slots=True)
class Scales:
    out_scale: float = 1.0
    in_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("out_scale", "in_scale"):
            v = getattr(self, name)
            if not (v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {v}")

    @property
    def identity(self) -> bool:
        return self.out_scale == 1.0 and self.in_scale == 1.0


def _estimate_input_tokens(before: Call, after: Call, old_outputs: Mapping[str, str], new_outputs: Mapping[str, str]) -> int:
    """`before`'s recorded input_tokens plus the change in prompt characters, at `before`'s
    own characters-per-token rate (no tokenizer at hand)."""
    try:
        n0 = len(before.render_prompt(old_outputs))
        n1 = len(after.render_prompt(new_outputs))
    except KeyError:  # a ref whose upstream kept no text: nothing to measure
        return before.input_tokens
    if n0 <= 0 or before.input_tokens <= 0:
        return before.input_tokens
    chars_per_token = n0 / before.input_tokens
    return max(1, before.input_tokens + round((n1 - n0) / chars_per_token))


def _resize_segments(segments: Iterable[dict], ratio: float) -> list[dict]:
    return [{"text": resize_text(s["text"], ratio)} if "text" in s else dict(s) for s in segments]


def copy_id(x: str, k: int) -> str:
    """The id of copy k of a workflow or call (copy 0 is the original)."""
    return x if k == 0 else f"{x}~{k}"


def _copy_hash(h: int, k: int) -> int:
    return int.from_bytes(hashlib.blake2b(h.to_bytes(8, "big") + f"|mrw-copy{k}".encode(), digest_size=8).digest(), "big") >> 1


def replicate(
    trace: Trace,
    copies: int,
    *,
    stagger_s: float = 0.0,
    count_tokens: TokenCounter | None = None,
    token_counter_name: str | None = None,
    source_sha256: str | None = None,
) -> Trace:
    """`copies` copies of every workflow, as separate as distinct workflows (module docstring).

    Order: all workflows of copy 0 (the originals), then of copy 1, ...; copy k arrives
    `k * stagger_s` after the original."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if stagger_s < 0:
        raise ValueError(f"stagger must be >= 0 s, got {stagger_s}")
    # What more than one source workflow has is shared; the rest is the workflow's own.
    seen_in: dict[str | int, str] = {}
    shared: set[str | int] = set()
    for w in trace.workflows:
        for c in w.calls:
            keys: list[str | int] = [s["text"] for s in c.segments() if "text" in s]
            keys += c.hash_ids or []
            for key in keys:
                if seen_in.setdefault(key, w.id) != w.id:
                    shared.add(key)
    old_outputs = trace.recorded_outputs()
    workflows = list(copy.deepcopy(trace.workflows))
    for k in range(1, copies):
        tag = f"[copy {k}] "
        new_outputs = {copy_id(cid, k): tag + out for cid, out in old_outputs.items()}
        for w0 in trace.workflows:
            w = copy.deepcopy(w0)
            w.id = copy_id(w0.id, k)
            shift = k * stagger_s  # the arrival and the recorded times move alike
            w.arrival_s = w0.arrival_s + shift
            for c in w.calls:
                c.id = copy_id(c.id, k)
                c.deps = [copy_id(d, k) for d in c.deps]
                c.t_issue, c.t_first_token, c.t_end = (None if t is None else t + shift for t in (c.t_issue, c.t_first_token, c.t_end))
                if c.output is not None:
                    c.output = tag + c.output
                if c.hash_ids is not None:
                    c.hash_ids = [h if h in shared else _copy_hash(h, k) for h in c.hash_ids]
                segs = [m.content for m in c.messages] if c.messages is not None else [c.prompt] if c.prompt is not None else []
                for content in segs:
                    for i, s in enumerate(content):
                        if "ref" in s:
                            content[i] = {"ref": copy_id(s["ref"], k)}
                        elif s["text"] not in shared and s["text"]:
                            content[i] = {"text": tag + s["text"]}
            for c0, c in zip(w0.calls, w.calls):
                if not c.has_text:
                    continue
                c.input_tokens = (count_tokens(c, new_outputs) if count_tokens is not None
                                  else _estimate_input_tokens(c0, c, old_outputs, new_outputs))
            workflows.append(w)
    header = copy.deepcopy(trace.header)
    prev = dict(header.extra.get("transform") or {})
    header.extra = dict(header.extra)
    header.extra["transform"] = {
        **prev,
        "method": "mrw.transform",
        "version": TRANSFORM_VERSION,
        "copies": int(prev.get("copies", 1)) * copies,
        "steps": [*prev.get("steps", []), {"copies": copies, "stagger_s": stagger_s}],
        "source_sha256": prev.get("source_sha256", source_sha256),
        "copy_input_tokens": (
            f"counted with {token_counter_name or 'a tokenizer'}" if count_tokens is not None
            else "estimated from characters"
        ),
        "note": "recorded timestamps are those of the source recording",
    }
    return Trace(header=header, workflows=workflows)


def _input_provenance(counted: int, estimated: int, scaled: int, in_scale: float, counter: str | None) -> str:
    """How this step set input_tokens, for header.extra.transform: every way that applied."""
    how = []
    if counted:
        how.append(f"counted with {counter or 'a tokenizer'}")
    if estimated:
        how.append("estimated from characters")
    if scaled:
        how.append(f"scaled by {in_scale:g} and rounded (calls without text)")
    return "; ".join(how) or "unchanged"


def scale_trace(
    trace: Trace,
    out_scale: float = 1.0,
    in_scale: float = 1.0,
    *,
    count_tokens: TokenCounter | None = None,
    token_counter_name: str | None = None,
    source_sha256: str | None = None,
) -> Trace:
    """A new trace with output and input lengths scaled (the input trace is not modified).

    `count_tokens` recounts `input_tokens` exactly (see `hf_token_counter`); without it the
    counts are estimated and the header says so."""
    sc = Scales(float(out_scale), float(in_scale))
    t = copy.deepcopy(trace)
    old_outputs = trace.recorded_outputs()

    # 1. outputs: token counts and recorded text (the text is what downstream refs splice).
    for _, c in t.calls():
        c.output_tokens = scaled_tokens(c.output_tokens, sc.out_scale)
        if "max_tokens" in c.sampling:
            c.sampling["max_tokens"] = c.output_tokens
        if "max_completion_tokens" in c.sampling:
            c.sampling["max_completion_tokens"] = c.output_tokens
        if c.output is not None and sc.out_scale != 1.0:
            c.output = resize_text(c.output, sc.out_scale)
    new_outputs = t.recorded_outputs()

    # 2. inputs: literal segments resized; refs kept; token counts recounted or estimated.
    estimated = counted = scaled = 0
    for (_, c), (_, c0) in zip(t.calls(), trace.calls()):
        if sc.in_scale != 1.0:
            if c.messages is not None:
                for m in c.messages:
                    m.content = _resize_segments(m.content, sc.in_scale)
            elif c.prompt is not None:
                c.prompt = _resize_segments(c.prompt, sc.in_scale)
        if not c.has_text:
            if sc.in_scale != 1.0:
                c.input_tokens = scaled_tokens(c.input_tokens, sc.in_scale)
                scaled += 1
                if c.hash_ids is not None and t.header.block_size:
                    bs = t.header.block_size
                    c.hash_ids = extend_hashes(c.hash_ids, -(-c.input_tokens // bs))
            continue
        if c.hash_ids is not None and not sc.identity:
            c.hash_ids = None  # hashes of the old text no longer describe the new prompt
        if count_tokens is not None:
            c.input_tokens = count_tokens(c, new_outputs)
            counted += 1
        elif not sc.identity:
            c.input_tokens = _estimate_input_tokens(c0, c, old_outputs, new_outputs)
            estimated += 1

    prev = dict(t.header.extra.get("transform") or {})
    composed_out = float(prev.get("out_scale", 1.0)) * sc.out_scale
    composed_in = float(prev.get("in_scale", 1.0)) * sc.in_scale
    t.header.extra = dict(t.header.extra)
    t.header.extra["transform"] = {
        "method": "mrw.transform",
        "version": TRANSFORM_VERSION,
        "out_scale": composed_out,
        "in_scale": composed_in,
        "steps": [*prev.get("steps", []), {"out_scale": sc.out_scale, "in_scale": sc.in_scale}],
        "source_sha256": prev.get("source_sha256", source_sha256),
        "input_tokens": _input_provenance(counted, estimated, scaled, sc.in_scale, token_counter_name),
        "note": "recorded timestamps are those of the source recording",
    }
    return t

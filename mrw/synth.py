"""Prompts for calls that carry no text (anonymised or imported traces), built from hash_ids.

Token ids (engines that take token-id prompts, e.g. vLLM's /v1/completions): each block hash
seeds a PRNG that draws `block_size` token ids from the target vocabulary, special tokens
excluded; the blocks are concatenated and the last one trimmed so the prompt has exactly
`input_tokens` ids. Equal hashes give equal blocks, and hashes are chained, so two calls
that shared a k-block prefix in the original share exactly k blocks of ids here: the
engine's prefix cache hits as it did on the original. Blocks beyond the recorded hashes (or
all blocks, for a call with no hash_ids at all, such as an Azure import) are drawn from a
seed unique to the call, so they share nothing, as nothing is known to be shared.

The one representation underneath: a prompt is a list of *runs* `(seed, n)`, each the first
`n` ids of the stream that `seed` starts (`random.Random(seed).choices` over the vocabulary:
a prefix of a longer draw from the same seed is the shorter draw). Two prompts whose run
lists agree up to some position have identical ids up to there. hash_ids become one run per
block; the replay's recorded-length prompts for text traces (mrw.replay.prompts) become one
run per owner of a shared stretch.

Text (engines that take only text): the same construction over a pool of words that are one
token each, with a space before them, under the given tokenizer (" apple", " river", ...).
Byte-level BPE and SentencePiece tokenizers split text at spaces before merging, so a
sequence of such words tokenises to exactly one token per word, and block boundaries fall on
word boundaries: shared blocks give shared token prefixes. Every prompt is re-encoded and
checked; should a tokenizer merge across words anyway, words are added or dropped at the end
until the count is exact, and a prompt that cannot be made exact raises SynthError. The
count is of the prompt text alone (`add_special_tokens=False`); pass `overhead_tokens` for
what the engine adds around it (a BOS token, a chat template) so that the total matches.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Protocol

from mrw.errors import MrwError
from mrw.trace import Call


class SynthError(MrwError):
    """A prompt of the required length cannot be built for this target."""


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Vocab:
    """The token ids a synthetic prompt may use: 0..size-1 minus the special ones, or an
    explicit pool (`of_ids`: the ids a tokenizer produced for ordinary text, when only its
    encoder is reachable, e.g. through an engine's /tokenize)."""

    size: int
    special_ids: frozenset[int] = frozenset()
    pool: tuple[int, ...] | None = None

    @classmethod
    def of_ids(cls, ids: Any) -> "Vocab":
        pool = tuple(sorted(set(int(i) for i in ids)))
        if not pool:
            raise SynthError("the target vocabulary has no ordinary tokens")
        return cls(size=pool[-1] + 1, pool=pool)

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "Vocab":
        special = set(getattr(tok, "all_special_ids", []) or [])
        added = getattr(tok, "added_tokens_decoder", None) or {}
        special.update(int(i) for i in added)  # added tokens are often control tokens
        return cls(size=len(tok), special_ids=frozenset(special))

    @property
    def allowed(self) -> list[int]:
        if self.pool is not None:
            return _pool(self.pool)
        return _allowed(self.size, self.special_ids)


@lru_cache(maxsize=8)
def _pool(pool: tuple[int, ...]) -> list[int]:
    return list(pool)


@lru_cache(maxsize=8)
def _allowed(size: int, special: frozenset[int]) -> list[int]:
    ids = [i for i in range(size) if i not in special]
    if not ids:
        raise SynthError("the target vocabulary has no ordinary tokens")
    return ids


def _call_seed(call: Call) -> int:
    return int.from_bytes(hashlib.blake2b(f"mrw-synth|{call.id}".encode(), digest_size=8).digest(), "big")


def block_seeds(call: Call, block_size: int) -> list[int]:
    """One seed per block needed for `call.input_tokens`: its hash_ids, then call-unique seeds."""
    n = -(-call.input_tokens // block_size) if call.input_tokens > 0 else 0
    seeds = list(call.hash_ids or [])[:n]
    base = _call_seed(call)
    seeds += [(base + i) & (2**63 - 1) | (1 << 63) for i in range(len(seeds), n)]  # high bit: never a hash_id
    return seeds


Run = tuple[int, int]  # (seed, n): the first n ids of the stream `seed` starts


def block_runs(call: Call, block_size: int) -> list[Run]:
    """The call's prompt as runs: one per block seed, the last cut so the total is exactly
    call.input_tokens."""
    runs: list[Run] = []
    left = call.input_tokens
    for seed in block_seeds(call, block_size):
        n = min(block_size, left)
        runs.append((seed, n))
        left -= n
    return runs


def ids_of_runs(runs: list[Run], vocab: Vocab) -> list[int]:
    """The token ids of a run list (exactly sum(n) of them)."""
    allowed = vocab.allowed
    out: list[int] = []
    for seed, n in runs:
        out.extend(random.Random(seed).choices(allowed, k=n))
    return out


def iter_ids(runs: list[Run], vocab: Vocab, chunk: int) -> Iterator[list[int]]:
    """The same ids as `ids_of_runs`, in pieces of at most `chunk` (a builder that must stay
    responsive draws a long run a piece at a time; the stream continues where it stopped)."""
    allowed = vocab.allowed
    for seed, n in runs:
        rng = random.Random(seed)
        while n > 0:
            k = min(chunk, n)
            yield rng.choices(allowed, k=k)
            n -= k


def token_ids(call: Call, block_size: int, vocab: Vocab) -> list[int]:
    """Exactly call.input_tokens ids; see the module docstring."""
    return ids_of_runs(block_runs(call, block_size), vocab)


_WORD = re.compile(r"^[a-z]{2,12}$")


@lru_cache(maxsize=4)
def _word_pool(tok: Any) -> tuple[str, ...]:
    """Words w (lower-case ASCII) for which ' w' encodes to one token, a few thousand at most."""
    words: list[str] = []
    seen: set[str] = set()
    special = Vocab.from_tokenizer(tok).special_ids
    for i in range(len(tok)):
        if i in special:
            continue
        w = tok.decode([i]).strip()
        if w in seen or not _WORD.match(w):
            continue
        seen.add(w)
        if len(tok.encode(" " + w, add_special_tokens=False)) == 1:
            words.append(w)
            if len(words) >= 4096:
                break
    if len(words) < 64:
        raise SynthError(
            f"the tokenizer has only {len(words)} single-token words; text prompts of exact length cannot be built for it"
        )
    return tuple(words)


def text(call: Call, block_size: int, tokenizer: Any, *, overhead_tokens: int = 0) -> str:
    """Text whose token count (prompt alone) is exactly call.input_tokens - overhead_tokens."""
    target = max(call.input_tokens - overhead_tokens, 0)
    pool = _word_pool(tokenizer)
    words: list[str] = []
    for seed in block_seeds(call, block_size):
        words.extend(random.Random(seed).choices(pool, k=block_size))
    words = words[:target]
    s = "".join(" " + w for w in words)
    n = len(tokenizer.encode(s, add_special_tokens=False))
    filler = random.Random(_call_seed(call))
    for _ in range(4 * block_size + 16):  # only a tokenizer merging across spaces gets here
        if n == target:
            return s
        if n > target and words:
            words.pop()
        else:
            words.append(filler.choice(pool))
        s = "".join(" " + w for w in words)
        n = len(tokenizer.encode(s, add_special_tokens=False))
    if n == target:
        return s
    raise SynthError(f"call {call.id}: cannot build text of exactly {target} tokens with this tokenizer (got {n})")


def prompt_for(
    call: Call,
    block_size: int,
    tokenizer_or_vocab: Any,
    *,
    as_text: bool = False,
    overhead_tokens: int = 0,
) -> list[int] | str:
    """The prompt for a text-free call: token ids (default) or, with as_text, text.

    tokenizer_or_vocab: a Hugging Face tokenizer, a `Vocab`, or an int vocabulary size
    (ids only). The replay's Request builder calls this for calls without messages/prompt.
    """
    if isinstance(tokenizer_or_vocab, int):
        vocab: Vocab | None = Vocab(tokenizer_or_vocab)
    elif isinstance(tokenizer_or_vocab, Vocab):
        vocab = tokenizer_or_vocab
    else:
        vocab = None
    if as_text:
        if vocab is not None:
            raise SynthError("text prompts need a tokenizer, not just a vocabulary size")
        return text(call, block_size, tokenizer_or_vocab, overhead_tokens=overhead_tokens)
    if vocab is None:
        vocab = _vocab_of(tokenizer_or_vocab)
    ids = token_ids(call, block_size, vocab)
    return ids[: max(call.input_tokens - overhead_tokens, 0)] if overhead_tokens else ids


# Used when the replay cannot name the target's tokenizer: ids 16..1023 are ordinary tokens
# in the Llama, Qwen, SmolLM, GPT-2 and Mistral families (their special tokens sit below 16
# or far above 1023). Passing the served model's tokenizer is always better.
FALLBACK_VOCAB = Vocab(1024, frozenset(range(16)))


def prompt_token_ids(call: Call, header: Any, tokenizer_or_vocab: Any = None) -> list[int]:
    """Token ids for a text-free call, block size from the trace header (the replay's seam).

    Without a tokenizer or vocabulary, ids come from FALLBACK_VOCAB (see above)."""
    bs = getattr(header, "block_size", None) or 16
    return prompt_for(call, bs, FALLBACK_VOCAB if tokenizer_or_vocab is None else tokenizer_or_vocab)  # type: ignore[return-value]


_LAST: list[tuple[Any, Vocab]] = []  # (tokenizer, its Vocab): the replay asks for the same one per call


def _vocab_of(tok: Any) -> Vocab:
    if _LAST and _LAST[0][0] is tok:
        return _LAST[0][1]
    v = Vocab.from_tokenizer(tok)
    _LAST[:] = [(tok, v)]
    return v

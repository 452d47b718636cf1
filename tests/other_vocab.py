"""A second tiny model whose tokenizer has another vocabulary: a 3,000-token byte-level BPE
trained on made-up syllable text (as ../shared/gpu/make-tokenizer.py builds its offline
tokenizer), so the same English text counts quite differently than in the tests' usual
tokenizer (mrw-tiny-bpe, trained on the standard library's docstrings). Built here, never
downloaded; cached like the usual tiny model."""

from __future__ import annotations

import random
import string

from mrw.models import ModelSpec, cache_dir, tiny_model

VOCAB = 3000


def syllable_corpus(n: int = 20000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syl = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + list(string.ascii_letters + string.digits)

    def word() -> str:
        return "".join(rng.choice(syl) for _ in range(rng.randint(1, 5)))

    return [" ".join(word() for _ in range(rng.randint(5, 30))) + rng.choice([".", ",", "!", "?", ""]) for _ in range(n)]


def other_vocab_model() -> ModelSpec:
    return tiny_model(cache_dir() / "models" / f"tiny-llama-syllables-{VOCAB}", vocab_size=VOCAB, name="tiny-other",
                      corpus=syllable_corpus())

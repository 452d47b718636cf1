"""Chained block hashes: the one way mrw measures prefix sharing.

A sequence (token ids, or characters when no tokenizer is at hand) is cut into fixed-size
blocks; block i's hash covers blocks 0..i, exactly as a paged prefix cache keys its blocks.
Two prompts that share a prefix of k whole blocks share their first k hashes. Used by
`mrw info` (shared-prefix share), the anonymiser (hash_ids) and trace-format converters.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Iterable, Sequence


def block_hashes(seq: Sequence, block_size: int, salt: bytes = b"") -> list[int]:
    """63-bit chained hashes of the whole blocks of `seq` (a trailing partial block counts too,
    so that a prompt's every token is covered; it only ever matches an identical tail)."""
    out: list[int] = []
    prev = salt
    for i in range(0, len(seq), block_size):
        block = seq[i : i + block_size]
        data = block.encode() if isinstance(block, str) else array("q", block).tobytes()
        h = hashlib.blake2b(prev + b"|" + data, digest_size=8).digest()
        out.append(int.from_bytes(h, "big") >> 1)
        prev = h
    return out


def hit_blocks(hash_lists: Iterable[list[int]]) -> tuple[int, int]:
    """Replay the hash lists, in order, through an unbounded prefix cache.

    Returns (blocks that hit, total blocks). A block hits when its chained hash was seen
    before, which with chaining means the whole prefix up to it was seen.
    """
    seen: set[int] = set()
    hits = total = 0
    for hashes in hash_lists:
        for h in hashes:
            total += 1
            if h in seen:
                hits += 1
            else:
                seen.add(h)
    return hits, total


def coarsen(hash_ids: Sequence[int], block_size: int, new_block_size: int) -> list[int]:
    """Chained hashes of `block_size`-token blocks -> those of `new_block_size`-token blocks
    (a multiple of it), exactly: because hashes chain, the hash of the last fine block inside
    a coarse block already identifies the whole prefix up to it. The trailing partial block
    maps to the last fine hash, which covers the whole sequence."""
    if new_block_size % block_size:
        raise ValueError(f"block size {new_block_size} is not a multiple of {block_size}")
    r = new_block_size // block_size
    n = len(hash_ids)
    return [hash_ids[min((j + 1) * r, n) - 1] for j in range(-(-n // r))]

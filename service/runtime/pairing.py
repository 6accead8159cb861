"""Pair per-token states across two tokenizers by character offsets.

Source token i pairs with target token j when their character spans end at the same offset of the same text: word
ends mostly line up across tokenizers, so this yields about one pair per word. Tokens with empty spans (special
tokens) are left out; where several tokens of one side end at the same offset (a character split into bytes), the
last one, which has read the whole character, is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Texts -> the token ids of each, read alone without special tokens (a tokenizer's batch call).
PieceTokenizer = Callable[[list[str]], list[list[int]]]


def _by_end(offsets: list[tuple[int, int]]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for index, (start, end) in enumerate(offsets):
        if end > start:
            ends[end] = index
    return ends


def pair_indices(src_offsets: list[tuple[int, int]], tgt_offsets: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Indices (source, target) of token pairs whose spans end at the same character."""
    src_ends, tgt_ends = _by_end(src_offsets), _by_end(tgt_offsets)
    shared = sorted(set(src_ends) & set(tgt_ends))
    return [src_ends[e] for e in shared], [tgt_ends[e] for e in shared]


def paired_states(
    src_states: torch.Tensor,
    src_offsets: list[tuple[int, int]],
    tgt_states: torch.Tensor,
    tgt_offsets: list[tuple[int, int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (n_pairs, d_src) and (n_pairs, d_tgt) for one text."""
    si, ti = pair_indices(src_offsets, tgt_offsets)
    return src_states[si], tgt_states[ti]


def grid_indices(src_offsets: list[tuple[int, int]], tgt_offsets: list[tuple[int, int]]) -> list[int]:
    """For each target token, the source token whose state stands in for it on the target's token grid: the first
    source token ending at or after the target token's end (the one ending at the same character where there is one,
    as calibration pairs them; else the source token that has just read past it). A token with an empty span takes
    the choice before it (the first source token at the start); tokens past the source's last character take the
    last source token."""
    ends = [(end, i) for i, (start, end) in enumerate(src_offsets) if end > start]
    if not ends:
        raise ValueError("the source side has no tokens with text to stand in for the target's tokens")
    out: list[int] = []
    k = 0
    for start, end in tgt_offsets:
        if end <= start:
            out.append(out[-1] if out else ends[0][1])
            continue
        while k < len(ends) - 1 and ends[k][0] < end:
            k += 1
        out.append(ends[k][1])
    return out


def piece_pairs(
    text: str, src_offsets: list[tuple[int, int]], tokenize_pieces: PieceTokenizer
) -> tuple[list[int], list[int]]:
    """(source indices, target token ids): each source token whose characters the target reads as one token of its
    own, with that token. This pairs equal spans only, which suits a context-free target (its input embeddings):
    pairing by common end would pair a source piece with a longer target token that also covers the characters
    before it (SmolLM2's ``ark`` with Gemma 3's `` Lark``). Where several source tokens share one span (a character
    split into bytes), the last is kept, as ``pair_indices`` keeps it."""
    kept = [
        i
        for i, (s, e) in enumerate(src_offsets)
        if e > s and (i + 1 == len(src_offsets) or src_offsets[i + 1] != (s, e))
    ]
    pieces = tokenize_pieces([text[src_offsets[i][0] : src_offsets[i][1]] for i in kept])
    pairs = [(i, ids[0]) for i, ids in zip(kept, pieces, strict=True) if len(ids) == 1]
    return [i for i, _ in pairs], [t for _, t in pairs]

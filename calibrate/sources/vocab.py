"""Calibration text that covers the models' vocabularies: any pair can make it offline, from its tokenizers alone.

A map must name every token right to hand over names and numbers; text from one generator covers few of the
tokens that text from another source brings (on the real pair, 43% of the source tokens of a held-out letters set
never occur in 300 calibration passages). A vocabulary passage is ``WORDS`` of a model's own tokens, each decoded
alone and stripped, joined by spaces, in a seeded random order: the two tokenizers read the same characters, so the
pairing by character offsets pairs them like any other text. Their only probe is "repeat the text above"
(``probe_kinds``): it teaches the map to hand over tokens the target can copy back, while the continuation of a
random word list is noise to match.
"""

from __future__ import annotations

import random

from calibrate.sources.item import Item
from service.runtime.loading import LoadedModel

WORDS = 100


def vocabulary_words(model: LoadedModel) -> list[str]:
    """Every distinct non-empty printable string one of ``model``'s tokens decodes to, stripped, in token-id order;
    special and added tokens (chat markers, reserved placeholders) are left out."""
    tok = model.tokenizer
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    words: dict[str, None] = {}
    for i in range(len(tok)):
        if i in special:
            continue
        word = str(tok.decode([i])).strip()
        if word and word.isprintable():
            words.setdefault(word)
    return list(words)


def vocabulary_passages(model: LoadedModel, n: int, seed: int = 0, words: int = WORDS) -> list[Item]:
    """``n`` passages of ``words`` of ``model``'s vocabulary each, drawn without repeats in a seeded order (fewer
    when the vocabulary runs out)."""
    if n < 0:
        raise ValueError(f"the number of vocabulary passages must be >= 0, got {n}")
    if words < 1:
        raise ValueError(f"a vocabulary passage needs at least one word, got {words}")
    pool = vocabulary_words(model)
    random.Random(seed).shuffle(pool)
    return [
        Item(
            id=f"vocabulary-{model.name}-{k}",
            context=" ".join(pool[k * words : (k + 1) * words]),
            title=f"vocabulary:{model.name}",
            probe_kinds=("repeat",),
        )
        for k in range(min(n, len(pool) // words))
    ]

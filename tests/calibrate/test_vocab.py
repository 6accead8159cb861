"""Calibration text of vocabulary words: every word a real token of the model, none special, seeded, no repeats."""

from __future__ import annotations

import pytest

from calibrate.sources.vocab import vocabulary_passages, vocabulary_words
from service.runtime.loading import LoadedModel


def test_words_are_the_models_own_tokens_without_special_ones(tiny: dict[str, LoadedModel]) -> None:
    model = tiny["llama"]
    tok = model.tokenizer
    words = vocabulary_words(model)
    assert len(words) == len(set(words)) and all(w and w == w.strip() and w.isprintable() for w in words)
    specials = {tok.decode([i]).strip() for i in set(tok.all_special_ids) | set(tok.added_tokens_decoder)}
    assert specials and not specials & set(words)
    decoded = {tok.decode([i]).strip() for i in range(len(tok))}
    assert set(words) <= decoded
    assert len(words) > len(tok) // 2  # most of a byte-level vocabulary decodes to printable text


def test_passages_are_seeded_and_draw_each_word_once(tiny: dict[str, LoadedModel]) -> None:
    model = tiny["gemma3"]
    first = vocabulary_passages(model, 3, seed=0, words=20)
    assert [it.context for it in vocabulary_passages(model, 3, seed=0, words=20)] == [it.context for it in first]
    assert [it.context for it in vocabulary_passages(model, 3, seed=1, words=20)] != [it.context for it in first]
    pool = vocabulary_words(model)
    assert not any(" " in w for w in pool)  # byte-level words: none has a space inside, so a split gives them back
    drawn = [it.context.split(" ") for it in first]
    assert all(len(words) == 20 and set(words) <= set(pool) for words in drawn) and not any(it.has_qa for it in first)
    flat = [w for words in drawn for w in words]
    assert len(set(flat)) == len(flat)  # no word drawn twice
    everything = vocabulary_passages(model, 10_000, seed=0, words=20)
    assert len(everything) == len(pool) // 20  # fewer passages when the vocabulary runs out


def test_bad_counts_are_refused(tiny: dict[str, LoadedModel]) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        vocabulary_passages(tiny["llama"], -1)
    with pytest.raises(ValueError, match="at least one word"):
        vocabulary_passages(tiny["llama"], 1, words=0)


def test_vocabulary_passages_are_probed_by_repeating_them_only(tiny: dict[str, LoadedModel]) -> None:
    from calibrate.probes import make_probes
    from calibrate.sources import Item

    model = tiny["llama"]
    words = vocabulary_passages(model, 4, seed=0, words=30)
    prose = Item(id="prose", context="The mill stood by the river. It ground corn for the whole valley in autumn.")
    probes = make_probes(model, [*words, prose], ["continuation", "repeat"], max_tokens=8)
    kinds = {(p.passage, p.kind) for p in probes}
    assert kinds == {(i, "repeat") for i in range(len(words))} | {(4, "continuation"), (4, "repeat")}

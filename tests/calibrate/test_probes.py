"""Label-free probes: the cloze question is made from the passage itself and answered by a word of it."""

from __future__ import annotations

import random

import pytest

from calibrate.probes import BLANK, cloze, make_probes, qa_suffix
from calibrate.sources import Item
from service.runtime.loading import LoadedModel

LETTER = (
    "Dear Marisol, I reached Saint Pemmering on the 4th of April. The harbour master, Captain Ysabeau Brambrook, "
    "lent us her boat. We sail for Cape Sollace at dawn."
)


@pytest.mark.parametrize("seed", range(12))
def test_cloze_blanks_a_name_or_number_of_the_passage(seed: int) -> None:
    made = cloze(LETTER, random.Random(seed))
    assert made is not None
    question, word = made
    assert word in {
        "Marisol",
        "Saint",
        "Pemmering",
        "4th",
        "April",
        "Captain",
        "Ysabeau",
        "Brambrook",
        "Cape",
        "Sollace",
    }
    quote = question.split('"')[1]
    assert quote.count(BLANK) == 1
    assert quote.replace(BLANK, word) in " ".join(LETTER.split())  # the quote is the passage's own words
    assert len(quote.split()) <= 8


def test_cloze_falls_back_to_long_words_and_gives_up_on_none() -> None:
    question, word = cloze("the quick fox jumps over hedges and ditches.", random.Random(0)) or ("", "")
    assert word in {"hedges", "ditches"} and BLANK in question
    assert cloze("a b c. it is so.", random.Random(0)) is None
    assert cloze("", random.Random(0)) is None


def test_cloze_probes_ask_about_plain_text_and_are_seeded(tiny: dict[str, LoadedModel]) -> None:
    model = tiny["llama"]
    items = [Item(id=f"p{i}", context=LETTER.replace("April", month)) for i, month in enumerate(["May", "June"])]
    probes = make_probes(model, items, ["cloze"], max_tokens=512, seed=3)
    assert [p.kind for p in probes] == ["cloze", "cloze"]
    for p, it in zip(probes, items, strict=True):
        assert p.cut == len(it.context)  # the whole passage is handed over
        question, _, answer = p.text.rpartition(" ")
        assert question.startswith(qa_suffix("Which word goes in the blank:").split(":")[0])
        assert question.endswith("\nAnswer:") and BLANK in question and answer in it.context
        assert p.ids == model.tokenize(p.text)[0]
    again = make_probes(model, items, ["cloze"], max_tokens=512, seed=3)
    assert [p.text for p in again] == [p.text for p in probes]
    others = [make_probes(model, items, ["cloze"], max_tokens=512, seed=s)[0].text for s in range(8)]
    assert len(set(others)) > 1  # the blanked word depends on the seed

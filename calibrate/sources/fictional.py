"""``builtin:fictional-qa``: a seeded generator of SQuAD-format items about invented people, places, organisations
and dates, so that only the context can supply the answers.

Each item is a context of 2-4 sentences and one question whose answer is a span of the context. Names are built
from syllables, so they are new to any model; years and numbers are drawn at random.
"""

from __future__ import annotations

import random
import re

from calibrate.sources.item import Item

_ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "w",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x", "ll"]
_PLACE_ENDS = ["ford", "holm", "by", "wick", "stead", "mere", "gate", "haven", "dale", "port"]
_ORG_KINDS = ["Company", "Guild", "Society", "Institute", "Brewery", "Shipyard", "Press", "Observatory"]
_THINGS = [
    "a clock tower",
    "a paper mill",
    "a stone bridge",
    "a music school",
    "a lighthouse",
    "a glassworks",
    "a railway station",
    "a botanical garden",
    "a printing house",
    "a salt mine",
]
_JOBS = [
    "an engineer",
    "a botanist",
    "a cartographer",
    "a violinist",
    "a shipbuilder",
    "a chemist",
    "a weaver",
    "an astronomer",
    "a stonemason",
    "a physician",
]
_COLOURS = ["green", "blue", "red", "yellow", "white", "black", "orange", "grey"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).title()


class _Names:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def person(self) -> str:
        return f"{_word(self.rng, 2)} {_word(self.rng, 2)}"

    def place(self) -> str:
        return _word(self.rng, 2) + self.rng.choice(_PLACE_ENDS)

    def org(self) -> str:
        return f"the {_word(self.rng, 2)} {self.rng.choice(_ORG_KINDS)}"


def _item(rng: random.Random, index: int) -> Item:
    n = _Names(rng)
    person, partner, place, other_place, org = n.person(), n.person(), n.place(), n.place(), n.org()
    year = rng.randint(1640, 1990)
    later = year + rng.randint(3, 40)
    thing, job, colour = rng.choice(_THINGS), rng.choice(_JOBS), rng.choice(_COLOURS)
    count = rng.randint(3, 90)
    facts: list[tuple[str, list[tuple[str, str]]]] = [
        (
            f"{person} was {job} from {place}.",
            [(f"What was {person}'s profession?", job), (f"Where was {person} from?", place)],
        ),
        (
            f"In {year}, {person} founded {org} in {other_place}.",
            [
                (f"In which year did {person} found {org}?", str(year)),
                (f"Where did {person} found {org}?", other_place),
                (f"Who founded {org}?", person),
            ],
        ),
        (
            f"{org[0].upper() + org[1:]} built {thing} painted {colour} in {later}.",
            [(f"What colour was {thing} built by {org}?", colour), (f"When did {org} build {thing}?", str(later))],
        ),
        (
            f"Its first director was {partner}, who hired {count} workers.",
            [(f"Who was the first director of {org}?", partner), (f"How many workers did {partner} hire?", str(count))],
        ),
    ]
    first = facts[:2]
    rest = facts[2:]
    rng.shuffle(rest)
    chosen = first + rest[: rng.randint(0, 2)]
    context = " ".join(sentence for sentence, _ in chosen)
    question, answer = rng.choice([qa for _, qas in chosen for qa in qas])
    match = re.search(rf"\b{re.escape(answer)}\b", context)
    start = match.start() if match else context.find(answer)
    return Item(
        id=f"fictional-{index}",
        context=context,
        question=question,
        answers=[answer],
        answer_starts=[start],
        title="fictional-qa",
    )


def generate_items(n: int, seed: int = 0) -> list[Item]:
    """``n`` items, identical for the same seed."""
    rng = random.Random(seed)
    return [_item(rng, i) for i in range(n)]

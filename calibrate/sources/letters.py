"""``builtin:letters-qa``: a second, independent generator of QA items, written to differ from ``fictional-qa``.

Where ``fictional-qa`` writes short encyclopedic sentences about founders and buildings with syllable names, this one
writes first-person letters, ship's logs, market notices and expedition notes, with names built from other parts
(given names from a list, double-barrelled surnames), months and weekdays, prices, distances, cargo, animals and
instruments, and asks its questions in other words. It exists to hold out text from a different source than the
calibration text: calibrate on ``fictional-qa`` (and prose), evaluate on this.
"""

from __future__ import annotations

import random
import re

from calibrate.sources.item import Item

_GIVEN = [
    "Ilse", "Tobiah", "Marisol", "Corentin", "Agathe", "Lorcan", "Wilhelmina", "Esko", "Perpetua", "Anselm",
    "Rozalia", "Dashiell", "Oona", "Casimir", "Fenella", "Bartholomew", "Ysabeau", "Gideon", "Liesl", "Evander",
]  # fmt: skip
_SUR_A = ["Ash", "Crane", "Moss", "Vell", "Thorn", "Lark", "Wend", "Hollis", "Bram", "Quist", "Orme", "Pell"]
_SUR_B = ["combe", "well", "worth", "ridge", "ley", "shaw", "brook", "field", "hurst", "wood"]
_TOWN_A = ["Saint ", "Upper ", "Old ", "Little ", "Port ", "Cape ", "Fort ", "East "]
_TOWN_B = ["Meribel", "Caskadine", "Orvalle", "Tressing", "Aldovar", "Pemmering", "Sollace", "Varrowind", "Quenlow"]
_SHIPS = ["Merry Heron", "Silver Lantern", "Patient Otter", "Northern Thistle", "Brave Walrus", "Quiet Comet"]
_CARGO = ["barrels of cider", "bolts of linen", "sacks of barley", "crates of oranges", "coils of rope", "casks of tar"]
_ANIMALS = ["a lame pony", "two grey geese", "a black dog", "an old mule", "a tame crow", "three goats"]
_INSTRUMENTS = ["a cello", "a harmonium", "a brass cornet", "a hurdy-gurdy", "a mandolin", "a bassoon"]
_MONTHS = ["January", "March", "April", "June", "August", "September", "October", "November"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_GIVEN)} {rng.choice(_SUR_A)}{rng.choice(_SUR_B)}"


def _town(rng: random.Random) -> str:
    return rng.choice(_TOWN_A) + rng.choice(_TOWN_B)


def _letter(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    writer, friend, town = _person(rng), _person(rng), _town(rng)
    month, day, animal = rng.choice(_MONTHS), rng.choice(_DAYS), rng.choice(_ANIMALS)
    miles, instrument = rng.randint(4, 60), rng.choice(_INSTRUMENTS)
    text = (
        f"Dear {friend}, I reached {town} on a {day} in {month} after walking {miles} miles with {animal}. "
        f"The schoolmaster here lent me {instrument}, and I play it every evening. Yours, {writer}."
    )
    qas = [
        (f"Which town did {writer} reach?", town),
        (f"On which day of the week did {writer} arrive?", day),
        ("How many miles did the writer walk?", str(miles)),
        (f"What did the schoolmaster lend to {writer}?", instrument),
        ("To whom is the letter addressed?", friend),
    ]
    return text, qas


def _log(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    ship, captain, town, other = rng.choice(_SHIPS), _person(rng), _town(rng), _town(rng)
    cargo, count, knots = rng.choice(_CARGO), rng.randint(12, 400), rng.randint(3, 14)
    month = rng.choice(_MONTHS)
    text = (
        f"Log of the {ship}, {month}. Captain {captain} took on {count} {cargo} at {town} and set course for "
        f"{other}. Wind fair; we made {knots} knots until the fog came down."
    )
    qas = [
        (f"Who was the captain of the {ship}?", captain),
        ("Where was the cargo taken on?", town),
        ("What was the ship's destination?", other),
        ("How many knots did the ship make?", str(knots)),
        ("What was the name of the ship?", ship),
    ]
    return text, qas


def _notice(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    seller, town, cargo = _person(rng), _town(rng), rng.choice(_CARGO)
    price, day, hour = rng.randint(2, 95), rng.choice(_DAYS), rng.randint(7, 11)
    text = (
        f"Notice to the people of {town}: {seller} will sell {cargo} at {price} pence apiece on {day} morning, "
        f"from {hour} o'clock, beside the well. Bring your own baskets."
    )
    qas = [
        (f"Who is selling {cargo}?", seller),
        ("What is the price of one item in pence?", str(price)),
        ("On what day will the sale take place?", day),
        ("At what hour does the sale start?", str(hour)),
    ]
    return text, qas


def _expedition(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    leader, guide, town = _person(rng), _person(rng), _town(rng)
    peak = rng.choice(_TOWN_B) + " Peak"
    feet, days, animal = rng.randint(2000, 14000), rng.randint(2, 30), rng.choice(_ANIMALS)
    text = (
        f"The expedition led by {leader} left {town} to climb {peak}. After {days} days they stood at {feet} feet. "
        f"Their guide, {guide}, had brought {animal} to carry the tents."
    )
    qas = [
        (f"Who led the expedition to {peak}?", leader),
        ("Which mountain did the expedition climb?", peak),
        ("How high did they stand, in feet?", str(feet)),
        ("Who was the guide?", guide),
        ("What did the guide bring to carry the tents?", animal),
    ]
    return text, qas


_KINDS = (_letter, _log, _notice, _expedition)


def generate_items(n: int, seed: int = 0) -> list[Item]:
    """``n`` items, identical for the same seed; every answer is a span of its context."""
    rng = random.Random(seed + 7919)
    items = []
    for i in range(n):
        context, qas = rng.choice(_KINDS)(rng)
        question, answer = rng.choice(qas)
        match = re.search(re.escape(answer), context)
        items.append(
            Item(
                id=f"letters-{i}",
                context=context,
                question=question,
                answers=[answer],
                answer_starts=[match.start() if match else -1],
                title="letters-qa",
            )
        )
    return items

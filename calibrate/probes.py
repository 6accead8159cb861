"""Probes: what the target reads natively after a handed-over passage, for training and ranking maps without labels.

For each calibration passage, the target reads one of:
- ``continuation``: the passage is cut at a sentence end near its middle; the first part is handed over and the
  target reads the rest (any plain text works);
- ``repeat``: the whole passage is handed over, then "Repeat the text above." and the passage itself;
- ``qa``: for items with a question, the whole passage is handed over, then the QA prompt and the target's *own*
  native answer (greedy, from reading the passage itself), so no gold label is needed;
- ``cloze``: any plain text: the whole passage is handed over, then the QA prompt asks which word fills a blank in a
  few words quoted from the passage, and the answer is that word: a question about the text, on text of any source.
The teacher is the target reading the handed-over part natively; the probe's tokens are where its next-token
distributions are compared.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from calibrate.cache import cached_json
from calibrate.sources import Item
from service.runtime.generate import SamplingParams, generate
from service.runtime.loading import LoadedModel
from service.runtime.modes import NATIVE
from service.runtime.prompt import Prompt

PROBE_KINDS = ("continuation", "repeat", "qa", "cloze")
REPEAT_PROMPT = "\n\nRepeat the text above.\n"
BLANK = "___"
_WORD = re.compile(r"[A-Za-z0-9][\w'-]*[A-Za-z0-9]|[A-Za-z0-9]")


def qa_suffix(question: str) -> str:
    return f"\nQuestion: {question}\nAnswer:"


def qa_probe(question: str, answer: str) -> str:
    """What the target reads after the passage in a ``qa`` or ``cloze`` probe: the QA prompt and its answer."""
    return qa_suffix(question) + " " + answer.strip()


@dataclass
class Probe:
    """Passage ``passage`` is handed over up to character ``cut``; the target then reads ``ids`` (its own tokens)."""

    passage: int
    cut: int
    kind: str
    text: str
    ids: list[int]


def sentence_cut(text: str) -> int | None:
    """The sentence end nearest the middle of ``text`` that leaves text on both sides, or None."""
    ends = [m.end() for m in re.finditer(r"[.!?:;](?=\s)", text) if 0 < m.end() < len(text.rstrip())]
    if not ends:
        return None
    return min(ends, key=lambda e: abs(e - len(text) / 2))


def cloze(text: str, rng: random.Random, before: int = 4, after: int = 3) -> tuple[str, str] | None:
    """A question about ``text`` with a known answer: (question, word). The word is drawn from the names and numbers
    inside sentences (capitalised, not first in their sentence, or with a digit), else from the words of six
    letters or more; the question quotes the ``before`` words ahead of it and ``after`` behind it with the word
    blanked. None when the text has no such word."""
    words = list(_WORD.finditer(text))

    def opens_sentence(k: int) -> bool:
        return k == 0 or bool(re.search(r"[.!?:;\n]\W*$", text[words[k - 1].end() : words[k].start()]))

    def named(k: int) -> bool:
        word = words[k].group()
        return any(c.isdigit() for c in word) or (word[0].isupper() and len(word) > 1 and not opens_sentence(k))

    pool = [k for k in range(len(words)) if named(k)] or [k for k, w in enumerate(words) if len(w.group()) >= 6]
    if not pool:
        return None
    k = rng.choice(pool)
    lo, hi = words[max(0, k - before)].start(), words[min(len(words) - 1, k + after)].end()
    quote = " ".join((text[lo : words[k].start()] + BLANK + text[words[k].end() : hi]).split())
    return f'Which word goes in the blank: "{quote}"?', words[k].group()


def _cloze_probe(target: LoadedModel, text: str, seed: str, max_tokens: int) -> str | None:
    """The cloze probe of ``text``, its quote shortened until the answer fits in ``max_tokens`` (None: no word)."""
    for before, after in ((4, 3), (3, 2), (2, 1), (1, 0)):
        made = cloze(text, random.Random(seed), before, after)
        if made is None:
            return None
        probe = qa_probe(*made)
        if len(target.tokenize(probe)[0]) <= max_tokens:
            break
    return probe


def native_answers(
    target: LoadedModel,
    items: list[Item],
    max_new_tokens: int = 10,
    batch_size: int = 16,
    cache: Path | None = None,
) -> list[str]:
    """The target's own greedy answer to each item's question, reading the passage natively (first line); cached
    as JSON under ``cache/answers/`` when given."""

    def answer() -> list[str]:
        out: list[str] = []
        params = SamplingParams(max_new_tokens=max_new_tokens, stop=["\n"])
        for start in tqdm(range(0, len(items), batch_size), desc="native answers", unit="batch", leave=False):
            chunk = items[start : start + batch_size]
            prompts = [
                Prompt(NATIVE, target.tokenize(qa_suffix(it.question))[0], prefix_ids=target.tokenize(it.context)[0])
                for it in chunk
            ]
            out.extend(c.text.split("\n")[0] for c in generate(target, prompts, params))
        return out

    key = [max_new_tokens, [(it.context, it.question) for it in items]]
    return cached_json(cache, "answers", target.fingerprint, key, answer)


def _applies(item: Item, kind: str) -> bool:
    """Whether a probe of ``kind`` can be made for ``item``: ``qa`` needs a question, and a passage may allow only
    some kinds (``Item.probe_kinds``)."""
    return (kind != "qa" or item.has_qa) and (item.probe_kinds is None or kind in item.probe_kinds)


def make_probes(
    target: LoadedModel,
    items: list[Item],
    kinds: list[str],
    max_tokens: int = 32,
    batch_size: int = 16,
    per_passage: int | None = None,
    seed: int = 0,
    cache: Path | None = None,
) -> list[Probe]:
    """The probes of ``kinds`` for every passage that allows them (probe tokens cut to ``max_tokens``); with
    ``per_passage``, that many of each passage's probes, drawn with ``seed`` (the teacher's cost is per probe). The
    target's native answers for ``qa`` probes are cached under ``cache`` when given."""
    unknown = sorted(set(kinds) - set(PROBE_KINDS))
    if unknown or not kinds:
        raise ValueError(f"probe kinds must be a non-empty subset of {list(PROBE_KINDS)}, got {kinds}")
    if max_tokens < 1:
        raise ValueError(f"max probe tokens must be >= 1, got {max_tokens}")
    rng = random.Random(seed)
    drawn = {i: rng.sample(kinds, len(kinds)) for i in range(len(items))}  # each passage's kinds in a seeded order
    applicable = {
        i: [k for k in drawn[i] if _applies(it, k)][: per_passage or len(kinds)] for i, it in enumerate(items)
    }
    qa_items = [i for i in range(len(items)) if "qa" in applicable[i]]
    native = native_answers(target, [items[i] for i in qa_items], batch_size=batch_size, cache=cache)
    answers = dict(zip(qa_items, native, strict=True))
    probes: list[Probe] = []
    for i, it in enumerate(items):
        texts: list[tuple[int, str, str]] = []
        cut = sentence_cut(it.context)
        if "continuation" in applicable[i] and cut is not None:
            texts.append((cut, "continuation", it.context[cut:]))
        if "repeat" in applicable[i]:
            texts.append((len(it.context), "repeat", REPEAT_PROMPT + it.context))
        if i in answers:
            texts.append((len(it.context), "qa", qa_probe(it.question, answers[i])))
        blanked = _cloze_probe(target, it.context, f"{seed}-{i}", max_tokens) if "cloze" in applicable[i] else None
        if blanked is not None:
            texts.append((len(it.context), "cloze", blanked))
        for cut_at, kind, text in texts:
            ids = target.tokenize(text)[0][:max_tokens]
            if ids and cut_at > 0:
                probes.append(Probe(i, cut_at, kind, text, ids))
    return probes

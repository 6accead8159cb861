"""Calibration and evaluation data, reached by one spec: a file (SQuAD JSON, JSONL), ``hf:NAME[:SPLIT]`` or
``builtin:NAME``, alone or several comma-separated (``builtin:fictional-qa,builtin:python-docs``: interleaved).

The builtin sources, one module each: ``fictional`` (``fictional-qa``: invented QA items), ``letters``
(``letters-qa``: an independent QA generator, kept for evaluation), ``prose`` (``python-docs``, ``stdlib-docs``:
real prose that ships with Python). Passages the models make themselves come from ``sampled`` and ``vocab`` (they
need the models: ``fit --sampled``, ``--vocab``). A new source is one module with a ``(n, seed) -> list[Item]``
function and one line in ``BUILTINS``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from calibrate.sources import fictional, letters, prose
from calibrate.sources.item import DataError, Item
from calibrate.sources.readers import hf, read_file

BUILTINS: dict[str, Callable[[int, int], list[Item]]] = {
    "fictional-qa": fictional.generate_items,
    "letters-qa": letters.generate_items,
    "python-docs": prose.python_docs,
    "stdlib-docs": prose.stdlib_docs,
    "module-docs": prose.module_docs,
}

__all__ = ["BUILTINS", "DataError", "Item", "read_items", "shares", "split_items"]


def read_items(spec: str, seed: int = 0, builtin_size: int = 2000) -> list[Item]:
    """All items of a data source (``builtin:`` sources generate ``builtin_size`` items with ``seed``). A
    comma-separated list mixes sources: their items, interleaved one from each in turn."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) > 1:
        lists = [read_items(p, seed, builtin_size) for p in parts]
        return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            raise DataError(f"{spec}: unknown builtin data set; known: {', '.join('builtin:' + b for b in BUILTINS)}")
        return BUILTINS[name](builtin_size, seed)
    if spec.startswith("hf:"):
        return hf(spec.removeprefix("hf:"))
    if spec.startswith(("sampled:", "vocab:")):
        raise DataError(f"{spec}: passages the models make (sampled:N, vocab:N) are only for `fit`'s calibration data")
    return read_file(spec)


def split_items(items: list[Item], n_calib: int, n_eval: int, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Disjoint calibration passages (one item per context) and held-out QA items. Items sharing a context stay on
    one side, so no held-out context was seen in calibration."""
    contexts = sorted({it.context for it in items})
    random.Random(seed).shuffle(contexts)
    by_context: dict[str, list[Item]] = {}
    for it in items:
        by_context.setdefault(it.context, []).append(it)
    held: list[Item] = []
    calib: list[Item] = []
    for c in contexts:
        group = by_context[c]
        if len(held) < n_eval and any(it.has_qa for it in group):
            held.extend(it for it in group if it.has_qa)
        else:
            calib.append(group[0])  # calibration reads contexts: one item per context
    return calib[:n_calib], held[:n_eval]


def shares(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` counts as even as can be, the first ones one larger (passages made per model)."""
    return [n // parts + (k < n % parts) for k in range(parts)]

"""Calibration and evaluation data: SQuAD v1.1/v2.0 JSON, JSONL, ``hf:NAME[:SPLIT]`` and ``builtin:NAME``, alone or
mixed (``builtin:fictional-qa,builtin:python-docs``).

Every source becomes a list of ``Item``s. Items without a question (JSONL with only ``text``) serve calibration but
not QA evaluation; SQuAD v2.0 unanswerable questions are skipped.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data source that cannot be read; the message names the source and the problem."""


@dataclass
class Item:
    id: str
    context: str
    question: str = ""
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)
    title: str = ""
    probe_kinds: tuple[str, ...] | None = None  # the probe kinds this passage allows (None: every kind that applies)

    @property
    def has_qa(self) -> bool:
        return bool(self.question and self.answers)


def _squad(path: Path, doc: dict[str, Any]) -> list[Item]:
    items: list[Item] = []
    if not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (no top-level 'data' list)")
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{path}: data[{a}] has no 'paragraphs' list")
        for p, para in enumerate(paragraphs):
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{path}: data[{a}].paragraphs[{p}] has no 'context' string")
            qas = para.get("qas", [])
            answerable = [qa for qa in qas if not qa.get("is_impossible") and qa.get("answers")]
            if not answerable:
                items.append(Item(id=f"{a}-{p}", context=context, title=article.get("title", "")))
            for q, qa in enumerate(answerable):
                answers = [ans.get("text", "") for ans in qa["answers"] if isinstance(ans, dict)]
                if not qa.get("question") or not any(answers):
                    raise DataError(f"{path}: data[{a}].paragraphs[{p}].qas[{q}] lacks a question or answer text")
                items.append(
                    Item(
                        id=str(qa.get("id", f"{a}-{p}-{q}")),
                        context=context,
                        question=qa["question"],
                        answers=[t for t in answers if t],
                        answer_starts=[int(ans.get("answer_start", -1)) for ans in qa["answers"]],
                        title=article.get("title", ""),
                    )
                )
    return items


def _jsonl(path: Path) -> list[Item]:
    items = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: invalid JSON ({err.msg})") from None
            context = row.get("context", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{path}:{n}: each line needs a non-empty 'context' or 'text' string")
            answers = row.get("answers", [])
            if isinstance(answers, dict):  # the datasets library's SQuAD layout
                answers = answers.get("text", [])
            items.append(
                Item(
                    id=str(row.get("id", n)),
                    context=context,
                    question=row.get("question", ""),
                    answers=[str(a) for a in answers],
                )
            )
    return items


def _hf(spec: str) -> list[Item]:
    name, _, split = spec.partition(":")
    try:
        import datasets  # optional: only this source needs it
    except ImportError:
        raise DataError(f"hf:{spec}: the 'datasets' package is not installed (pip install datasets)") from None
    try:
        rows = datasets.load_dataset(name, split=split or "validation")
    except Exception as err:  # hub unreachable, unknown name, ...
        raise DataError(f"hf:{spec}: could not load ({type(err).__name__}: {err})") from None
    items = []
    for i, row in enumerate(rows):
        answers = row.get("answers", {})
        texts = answers.get("text", []) if isinstance(answers, dict) else list(answers)
        items.append(
            Item(
                id=str(row.get("id", i)),
                context=row.get("context") or row.get("text", ""),
                question=row.get("question", ""),
                answers=list(texts),
            )
        )
    return items


def read_items(spec: str, seed: int = 0, builtin_size: int = 2000) -> list[Item]:
    """All items of a data source (``builtin:`` sources generate ``builtin_size`` items with ``seed``). A
    comma-separated list mixes sources: their items, interleaved one from each in turn."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) > 1:
        lists = [read_items(p, seed, builtin_size) for p in parts]
        return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]
    if spec.startswith("builtin:"):
        from calibrate.fictional import BUILTINS

        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            raise DataError(f"{spec}: unknown builtin data set; known: {', '.join('builtin:' + b for b in BUILTINS)}")
        return BUILTINS[name](builtin_size, seed)
    if spec.startswith("hf:"):
        return _hf(spec.removeprefix("hf:"))
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{spec}: no such file (expected SQuAD JSON, JSONL, hf:NAME[:SPLIT] or builtin:fictional-qa)")
    if path.suffix == ".jsonl":
        items = _jsonl(path)
    else:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            hint = ""
            if isinstance(err, json.JSONDecodeError) and err.msg == "Extra data":
                hint = "; it looks like JSON Lines (one object per line): name the file .jsonl"
            raise DataError(f"{path}: not valid JSON ({err}){hint}") from None
        items = _squad(path, doc)
    if not items:
        raise DataError(f"{path}: no items")
    return items


def cached_json(
    cache: Path | None, kind: str, fingerprint: str, key: Any, compute: Callable[[], list[Any]]
) -> list[Any]:
    """``compute()``, kept as JSON under ``cache/kind/<fingerprint>-<hash of key>.json`` when ``cache`` is given and
    read back from there on later calls (written atomically, so an interrupted run leaves no partial file)."""
    if cache is None:
        return compute()
    digest = hashlib.sha256(json.dumps([fingerprint, key]).encode()).hexdigest()[:12]
    path = cache / kind / f"{fingerprint}-{digest}.json"
    if path.exists():
        return list(json.loads(path.read_text(encoding="utf-8")))
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out), encoding="utf-8")
    tmp.replace(path)
    return out


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

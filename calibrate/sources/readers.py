"""Readers of data files and hubs: SQuAD v1.1/v2.0 JSON, JSONL with ``context`` or ``text``, ``hf:NAME[:SPLIT]``.

Items without a question (JSONL with only ``text``) serve calibration but not QA evaluation; SQuAD v2.0 unanswerable
questions are skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from calibrate.sources.item import DataError, Item


def squad(path: Path, doc: dict[str, Any]) -> list[Item]:
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


def jsonl(path: Path) -> list[Item]:
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


def hf(spec: str) -> list[Item]:
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


def read_file(spec: str) -> list[Item]:
    """The items of a SQuAD JSON or JSONL file."""
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{spec}: no such file (expected SQuAD JSON, JSONL, hf:NAME[:SPLIT] or builtin:fictional-qa)")
    if path.suffix == ".jsonl":
        items = jsonl(path)
    else:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            hint = ""
            if isinstance(err, json.JSONDecodeError) and err.msg == "Extra data":
                hint = "; it looks like JSON Lines (one object per line): name the file .jsonl"
            raise DataError(f"{path}: not valid JSON ({err}){hint}") from None
        items = squad(path, doc)
    if not items:
        raise DataError(f"{path}: no items")
    return items

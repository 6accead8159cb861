"""What every data source gives: ``Item``s (a passage, and for QA a question and its answers), and the error for a
source that cannot be read."""

from __future__ import annotations

from dataclasses import dataclass, field


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

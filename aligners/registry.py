"""The kinds of map by name: ``register`` a class, ``build`` one by its kind (``aligners.io.load`` rebuilds a saved
map from its file's kind the same way), and the error for a map used before it is fitted."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aligners.base import Aligner


class NotFittedError(ValueError, AttributeError):
    """Raised when an aligner is used before ``fit`` (same contract as scikit-learn's NotFittedError)."""


REGISTRY: dict[str, type[Aligner]] = {}


def register(cls: type[Aligner]) -> type[Aligner]:
    """Class decorator: make an aligner buildable and loadable by its ``kind``."""
    REGISTRY[cls.kind] = cls
    return cls


def build(kind: str, **params: Any) -> Aligner:
    """Create an unfitted aligner of a registered kind, e.g. ``build("affine", lam=1e-3)``."""
    try:
        cls = REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown aligner kind {kind!r}; known kinds: {sorted(REGISTRY)}") from None
    return cls(**params)


def takes_seed(kind: str) -> bool:
    """Whether a kind's constructor takes a ``seed`` (its fit draws random numbers)."""
    return "seed" in inspect.signature(REGISTRY[kind].__init__).parameters

"""What ``fit`` chooses by itself, and the time it may take: training recipes tried in short pilots, and a budget.

For each way of entering the target (its input embeddings; a deeper layer) ``fit`` trains the best least-squares start
(``calibrate.sweep.rank_starts``). How to train it is searched unless the user fixes it: the step size (relative to each
parameter's scale, per input and output dimension, ``TrainConfig.lr_rel`` and ``TrainConfig.row_steps``; a fixed
``--lr`` is not searched) and the anchor to the least-squares start (``--anchor``). Coordinate by coordinate: each step
size in ``LR_RELS`` without an anchor, then each anchor in ``ANCHORS`` at the best step size. Every recipe trains the
same start for the same short time (a pilot) and is scored by the ranking proxy (``fit --rank-by``: by default probes on
another source than the calibration text, which the training never sees); the best recipe then trains the start again,
from the start, for the rest of its time. Pilots run only where the budget lets each reach ``PILOT_MIN_EVALS`` held-out
evaluations at the measured speed of a training step (``pilots_fit``); otherwise ``unpiloted_recipe`` trains for all the
time. Training keeps the state the ranking proxy scores best, goes back to it with smaller steps after an evaluation
that does not improve on it (``TrainConfig.backoff``), and stops when it stops improving.

``Budget``: one direction's wall-clock budget (``fit --budget`` minutes), split into phases (screening the
least-squares maps, pilots, training); the pilots get ``PILOT_SHARE`` of what is left when training begins, each
final training an equal share of the rest. A progress bar shows the budget spent and the phase.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from tqdm import tqdm

# Relative step sizes (× each parameter's own scale) and anchor weights the pilots try.
LR_RELS = (0.015, 0.045)
ANCHORS = (0.0, 2000.0)
PILOT_SHARE = 0.4  # of the time left when training begins
PILOT_MIN_EVALS = 2  # held-out evaluations a pilot must reach to be told apart from its start


@dataclass(frozen=True)
class Recipe:
    """How one map is trained: a relative step size (or a fixed one, ``lr``) and an anchor weight."""

    lr_rel: float
    anchor: float
    lr: float | None = None

    @property
    def label(self) -> str:
        step = f"lr {self.lr:g}" if self.lr is not None else f"lr_rel {self.lr_rel:g}"
        return f"{step}, anchor {self.anchor:g}"


def step_size_recipes(lr: float | None, anchor: float | None, lr_rel: float | None) -> list[Recipe]:
    """The first round of pilots: every step size to try (one where ``lr`` or ``lr_rel`` is fixed), at ``anchor`` or
    none."""
    at = 0.0 if anchor is None else anchor
    if lr is not None or lr_rel is not None:
        return [Recipe(LR_RELS[0] if lr_rel is None else lr_rel, at, lr)]
    return [Recipe(rel, at) for rel in LR_RELS]


def anchor_recipes(best: Recipe, anchor: float | None) -> list[Recipe]:
    """The second round: the other anchors at the best step size (none where ``anchor`` is fixed)."""
    if anchor is not None:
        return []
    return [Recipe(best.lr_rel, a, best.lr) for a in ANCHORS if a != best.anchor]


def unpiloted_recipe(lr: float | None, anchor: float | None, lr_rel: float | None) -> Recipe:
    """The recipe trained where no pilot runs: the first step size (or the fixed one), held nearest its start (the
    largest anchor, or the fixed one). Unsearched, the safer move: on the real pair, anchored training kept more on
    another generator's text than unanchored training of the same start (seventh round)."""
    first = step_size_recipes(lr, anchor, lr_rel)[0]
    return replace(first, anchor=max(ANCHORS) if anchor is None else anchor)


def n_pilots(lr: float | None, anchor: float | None, lr_rel: float | None) -> int:
    """How many recipes a start's pilots try (0 where both are fixed: nothing to choose)."""
    first = step_size_recipes(lr, anchor, lr_rel)
    n = len(first) + len(anchor_recipes(first[0], anchor))
    return 0 if n == 1 else n


def pilots_fit(pilot_s: float, step_s: float, eval_every: int) -> bool:
    """Whether a pilot of ``pilot_s`` seconds, at ``step_s`` seconds a training step, reaches ``PILOT_MIN_EVALS``
    held-out evaluations (one every ``eval_every`` steps). Shorter pilots end before training has moved a map off its
    start (on the real pair on 2 CPU cores ~30-step pilots all scored their start), so that time trains instead."""
    return pilot_s >= PILOT_MIN_EVALS * eval_every * step_s


@dataclass
class Budget:
    """One direction's time: ``minutes`` in all, spent phase by phase (``phase``), with a progress bar."""

    minutes: float
    label: str = ""
    spent: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        total = max(1, round(self.minutes * 60))
        self.bar = tqdm(total=total, desc=f"budget {self.label}".strip(), unit="s", leave=False)

    def left_s(self) -> float:
        return max(0.0, self.minutes * 60 - (time.perf_counter() - self.started))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the work inside under ``name`` (added up over calls) and show it on the bar."""
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start
            done = min(self.bar.total, round(time.perf_counter() - self.started))
            self.bar.update(done - self.bar.n)

    def close(self) -> str:
        """Ends the bar; returns the time split as one line."""
        self.bar.close()
        split = ", ".join(f"{name} {s / 60:.1f}" for name, s in self.spent.items())
        used = (time.perf_counter() - self.started) / 60
        return f"budget {self.label}: {used:.1f} of {self.minutes:g} min ({split})"

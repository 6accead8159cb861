"""From a text to a target-model prompt: encode with the source, map the states, build the ``Prompt``.

This is the one place that composes the runtime with the alignment maps; ``calibrate`` (evaluation) and the HTTP
service both call it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from aligners import Aligner
from aligners.store import layers_name
from service.runtime.encode import Encoded, encode
from service.runtime.loading import LoadedModel
from service.runtime.modes import Handed, HandoverMode, Mode, as_mode
from service.runtime.pairing import grid_indices
from service.runtime.prompt import LastTokenOp, Prompt
from service.runtime.snap import toward_vocabulary

# Which tokens' states the target receives: one per source token, or one per target token (``grid_indices``).
Grid = Literal["source", "target"]
GRIDS: tuple[Grid, ...] = ("source", "target")

# Texts and layers -> states: ``encode`` with the source's transformers modules, or another engine's encoder.
Encoder = Callable[[list[str], list[int]], list[Encoded]]


@dataclass
class LayerMap:
    """A fitted map from the source's ``source_layer`` states (with ``extra_layers``: the states at
    ``(*extra_layers, source_layer)`` concatenated per token) to the target's ``target_layer`` states."""

    source_layer: int
    target_layer: int
    aligner: Aligner
    extra_layers: tuple[int, ...] = ()
    snap_weight: float | None = None  # overrides the map's own snap weight (``snap``) where set

    @classmethod
    def of(cls, source_layers: tuple[int, ...] | list[int], target_layer: int, aligner: Aligner) -> LayerMap:
        """The map from the concatenated ``source_layers`` (ascending: the deepest is ``source_layer``)."""
        return cls(source_layers[-1], target_layer, aligner, tuple(source_layers[:-1]))

    @property
    def source_layers(self) -> tuple[int, ...]:
        return (*self.extra_layers, self.source_layer)

    @property
    def concatenated(self) -> list[int] | None:
        """The source layers where the map reads several concatenated (as responses report them); None for one."""
        return list(self.source_layers) if self.extra_layers else None

    @property
    def label(self) -> str:
        return f"L{layers_name(self.source_layers)}->L{self.target_layer}"

    @property
    def snap(self) -> float:
        """The share of the way each mapped state's token-identity part moves toward the target's nearest embedding
        row before the target reads it (``snap.toward_vocabulary``): chosen when the map was fitted, for maps into
        layer 0 and maps that carry a readout into it (``Aligner.readout``)."""
        if self.target_layer != 0 and self.aligner.readout is None:
            return 0.0
        return self.snap_weight if self.snap_weight is not None else float(self.aligner.fit_info.get("snap", 0.0))

    def tokens(self, x: torch.Tensor) -> torch.Tensor | None:
        """What the snap moves toward the vocabulary for source states ``x``: the readout's input embeddings for a
        deeper map, None for a map into layer 0 (its own states)."""
        return self.aligner.read_tokens(x) if self.target_layer and self.snap else None


@dataclass
class Handover:
    prompt: Prompt
    source_ids: list[int]
    source_offsets: list[tuple[int, int]]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Projected:
    """The source side of a handover: the text's source tokens and their states mapped into each target layer."""

    mapped: dict[int, torch.Tensor]  # target layer -> (n, d_B), float32
    ids: list[int]
    offsets: list[tuple[int, int]]
    timings_ms: dict[str, float] = field(default_factory=dict)
    snap: dict[int, float] = field(default_factory=dict)  # target layer -> snap weight of its map (``LayerMap.snap``)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # target layer -> readout (``LayerMap.tokens``)


def check_maps(mode: HandoverMode, maps: list[LayerMap], source: int, target: int) -> None:
    """Refuse maps that do not fit a mode (``HandoverMode.map_layers``) or the models' widths (``source`` ->
    ``target`` hidden sizes)."""
    if not mode.uses_maps:
        return
    if not maps:
        raise ValueError(f"mode {mode.name!r} needs at least one map")
    by_target = {m.target_layer for m in maps}
    layer = max(by_target)
    need = mode.map_layers(layer)
    if sorted(by_target) != need or len(maps) != len(need):
        into = f"target layers 0..{layer}" if mode.per_layer_maps else f"target layer {layer} only"
        raise ValueError(f"mode {mode.name!r} at layer {layer} needs maps into {into}, got {sorted(by_target)}")
    for m in maps:
        width = source * len(m.source_layers)
        if m.aligner.d_src != width or m.aligner.d_tgt != target:
            raise ValueError(
                f"map {m.label} is {m.aligner.d_src}->{m.aligner.d_tgt}, but the models need {width}->{target}"
            )


def needed_layers(maps: list[LayerMap]) -> list[int]:
    """Every source layer whose states the maps read."""
    return sorted({layer for m in maps for layer in m.source_layers})


def project(source: LoadedModel, text: str, maps: list[LayerMap], encoder: Encoder | None = None) -> Projected:
    """Encode ``text`` with the source (``encoder``, default: its transformers modules) and map its states into every
    target layer of ``maps``."""
    t0 = time.perf_counter()
    layers = needed_layers(maps)
    enc = (encoder or (lambda texts, at: encode(source, texts, at)))([text], layers)[0]
    t1 = time.perf_counter()
    if not enc.ids:
        raise ValueError(f"text has no tokens for {source.name}: a handover needs a non-empty text")
    mapped, tokens = {}, {}
    for m in maps:
        x = enc.at(m.source_layers).to(torch.float32)
        mapped[m.target_layer] = m.aligner.transform(x)
        read = m.tokens(x)
        if read is not None:
            tokens[m.target_layer] = read
    t2 = time.perf_counter()
    snap = {m.target_layer: m.snap for m in maps if m.snap}
    timings = {"encode": (t1 - t0) * 1e3, "project": (t2 - t1) * 1e3}
    return Projected(mapped, enc.ids, enc.offsets, timings, snap, tokens)


def build_prompt(
    target: LoadedModel,
    text: str,
    suffix: str,
    mode: Mode,
    projected: Projected | None,
    op: LastTokenOp = "replace",
    grid: Grid = "source",
) -> Prompt:
    """The target side of a handover: the target's prompt for a mode, from the projected states (None for
    ``native``, where the target tokenises ``text`` itself) and the ``suffix`` it reads natively after them. With
    ``grid="target"`` the target receives one state per token of its own tokenisation of ``text``, each taken from
    the source token aligned with it (``pairing.grid_indices``); maps work per token, so choosing rows after mapping
    is the same as before."""
    suffix_ids, _ = target.tokenize(suffix) if suffix else ([], [])
    mapped = {} if projected is None else {k: v.to(target.stack.dtype) for k, v in projected.mapped.items()}
    if projected is not None:
        for k, weight in projected.snap.items():
            mapped[k] = toward_vocabulary(target, mapped[k], weight, tokens=projected.tokens.get(k))
    if grid == "target" and projected is not None:
        rows = torch.tensor(grid_indices(projected.offsets, target.tokenize(text)[1]), dtype=torch.long)
        mapped = {k: v[rows.to(v.device)] for k, v in mapped.items()}
    elif grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    return as_mode(mode).build(Handed(target, text, suffix_ids, mapped, max(mapped, default=0), op))


def prepare(
    source: LoadedModel,
    target: LoadedModel,
    text: str,
    suffix: str,
    mode: Mode,
    maps: list[LayerMap],
    op: LastTokenOp = "replace",
    encoder: Encoder | None = None,
    grid: Grid = "source",
) -> Handover:
    """Encode ``text`` with the source, project it with ``maps`` and build the target's prompt (``modes``): the
    source half (``project``) and the target half (``build_prompt``) in one process; the Ray application runs the
    same two halves in a source and a target deployment.

    ``maps`` holds one map per target layer the mode needs (``HandoverMode.map_layers``: the injection layer, and for
    ``full`` every layer below it; the deepest is the injection layer). ``native`` needs no maps: the target tokenises
    ``text`` itself. ``suffix`` is read by the target natively after the handed-over prefix. ``encoder`` computes the
    source's states (default: ``encode`` with the source's transformers modules); ``grid`` whose token grid the
    handed-over states follow (``build_prompt``).
    """
    mode = as_mode(mode)
    if not mode.uses_maps:
        ids, offsets = target.tokenize(text)
        prompt = build_prompt(target, text, suffix, mode, None, op)
        return Handover(prompt, ids, offsets, {"encode": 0.0, "project": 0.0})
    check_maps(mode, maps, source.hidden_size, target.hidden_size)
    projected = project(source, text, maps, encoder)
    prompt = build_prompt(target, text, suffix, mode, projected, op, grid)
    return Handover(prompt, projected.ids, projected.offsets, projected.timings_ms)

"""From a text to a target-model prompt: encode with the source, map the states, build the ``Prompt``.

This is the one place that composes the runtime with the alignment maps; ``calibrate`` (evaluation) and the HTTP
service both call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from aligners import Aligner
from service.runtime.encode import encode
from service.runtime.generate import LastTokenOp, Mode, Prompt
from service.runtime.loading import LoadedModel


@dataclass
class LayerMap:
    """A fitted map from the source's ``source_layer`` states to the target's ``target_layer`` states."""

    source_layer: int
    target_layer: int
    aligner: Aligner


@dataclass
class Handover:
    prompt: Prompt
    source_ids: list[int]
    source_offsets: list[tuple[int, int]]
    timings_ms: dict[str, float] = field(default_factory=dict)


def _apply(aligner: Aligner, states: torch.Tensor, target: LoadedModel) -> torch.Tensor:
    return aligner.transform(states.to(torch.float32)).to(target.stack.dtype)


def prepare(
    source: LoadedModel,
    target: LoadedModel,
    text: str,
    suffix: str,
    mode: Mode,
    maps: list[LayerMap],
    op: LastTokenOp = "replace",
) -> Handover:
    """Encode ``text`` with the source, project it with ``maps`` and build the target's prompt.

    ``maps`` holds one map for replace/embeds/last_token (its target layer is where states enter) and, for ``full``,
    one per target layer 0..ℓ (the deepest is the injection layer). ``native`` needs no maps: the target tokenises
    ``text`` itself. ``suffix`` is read by the target natively after the handed-over prefix.
    """
    suffix_ids, _ = target.tokenize(suffix) if suffix else ([], [])
    if mode == "native":
        ids, offsets = target.tokenize(text)
        return Handover(Prompt("native", suffix_ids, prefix_ids=ids), ids, offsets, {"encode": 0.0, "project": 0.0})
    if not maps:
        raise ValueError(f"mode {mode!r} needs at least one map")
    by_target = {m.target_layer: m for m in maps}
    layer = max(by_target)
    if mode == "full" and set(by_target) != set(range(layer + 1)):
        raise ValueError(
            f"mode 'full' at layer {layer} needs maps for target layers 0..{layer}, got {sorted(by_target)}"
        )
    if mode != "full" and len(maps) != 1:
        raise ValueError(f"mode {mode!r} takes exactly one map, got {len(maps)}")
    for m in maps:
        if m.aligner.d_src != source.hidden_size or m.aligner.d_tgt != target.hidden_size:
            raise ValueError(
                f"map L{m.source_layer}->L{m.target_layer} is {m.aligner.d_src}->{m.aligner.d_tgt}, but "
                f"{source.name} -> {target.name} needs {source.hidden_size}->{target.hidden_size}"
            )

    t0 = time.perf_counter()
    enc = encode(source, [text], sorted({m.source_layer for m in maps}))[0]
    t1 = time.perf_counter()
    if not enc.ids:
        raise ValueError(f"text has no tokens for {source.name}: mode {mode!r} needs a non-empty text")
    mapped = {k: _apply(m.aligner, enc.states[m.source_layer], target) for k, m in by_target.items()}
    t2 = time.perf_counter()
    timings = {"encode": (t1 - t0) * 1e3, "project": (t2 - t1) * 1e3}
    if mode == "last_token":
        prompt = Prompt("last_token", suffix_ids, layer=layer, last_state=mapped[layer][-1], op=op)
    elif mode == "full":
        prompt = Prompt(
            "full",
            suffix_ids,
            layer=layer,
            states=mapped[layer],
            layer_states={k: v for k, v in mapped.items() if k < layer},
        )
    else:
        prompt = Prompt(mode, suffix_ids, layer=layer, states=mapped[layer])
    return Handover(prompt, enc.ids, enc.offsets, timings)

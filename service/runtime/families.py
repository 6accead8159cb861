"""Model families: where a decoder keeps its parts, and how its attention is windowed, one adapter per family.

The block runner (``stack.LayerStack``) asks the family adapter for the token embedding (for Gemma 3 a module that
applies the sqrt(d) scale itself, so layer 0 is the scaled embedding, as transformers' ``hidden_states[0]``), the
list of blocks, the final norm, the rotary module and the LM head, and for each block's sliding window. Adding a
family = one entry in ``FAMILIES`` plus a tiny config in ``tests/tiny.py`` that passes the runtime oracles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class UnsupportedArchitectureError(TypeError):
    """A model whose family the block runner does not know."""


@dataclass(frozen=True)
class Parts:
    embed_tokens: Any
    layers: Any
    norm: Any
    rotary_emb: Any
    lm_head: Any


def _decoder_parts(model: Any) -> Parts:
    inner = model.model
    return Parts(inner.embed_tokens, inner.layers, inner.norm, inner.rotary_emb, model.lm_head)


def _typed_windows(config: Any, n_layers: int) -> list[int | None]:
    """Per-block windows from ``layer_types`` (Gemma 3, Qwen with sliding layers): only sliding blocks have one."""
    types = list(getattr(config, "layer_types", None) or ["full_attention"] * n_layers)
    sliding = getattr(config, "sliding_window", None)
    use = getattr(config, "use_sliding_window", True)  # Qwen configs carry a window they do not use unless asked
    return [int(sliding) if t == "sliding_attention" and sliding and use else None for t in types]


def _uniform_windows(config: Any, n_layers: int) -> list[int | None]:
    """Mistral: one window for every block (no ``layer_types``)."""
    if getattr(config, "layer_types", None):
        return _typed_windows(config, n_layers)
    sliding = getattr(config, "sliding_window", None)
    return [int(sliding) if sliding else None] * n_layers


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    parts: Callable[[Any], Parts]
    windows: Callable[[Any, int], list[int | None]]


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), _decoder_parts, _typed_windows),
    Family("mistral", ("mistral",), _decoder_parts, _uniform_windows),
    Family("qwen2", ("qwen2",), _decoder_parts, _typed_windows),
    Family("qwen3", ("qwen3",), _decoder_parts, _typed_windows),
    Family("gemma3", ("gemma3_text",), _decoder_parts, _typed_windows),
)


def family_for(model: Any) -> Family:
    model_type = getattr(model.config, "model_type", "")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} (model_type {model_type!r}) is not a supported decoder family; supported: {supported}"
    )

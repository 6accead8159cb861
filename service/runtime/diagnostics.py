"""Diagnostics of mapped states: what the target would read from them (logit lens) and how close they land to the
target's own states for the same text (cosine at aligned positions)."""

from __future__ import annotations

import torch

from service.runtime.encode import encode
from service.runtime.loading import LoadedModel
from service.runtime.pairing import pair_indices


def logit_lens(target: LoadedModel, states: torch.Tensor, k: int) -> list[list[tuple[str, int, float]]]:
    """Per row of ``states`` (n, d_target): the target's top-``k`` next tokens read through its final norm and LM
    head, as (text, id, probability)."""
    probs = torch.softmax(target.stack.logits(states.to(target.stack.dtype)), dim=-1)
    top = torch.topk(probs, k, dim=-1)
    return [
        [(target.decode_continuation([int(i)]), int(i), float(p)) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(top.values, top.indices, strict=True)
    ]


def native_cosine(
    target: LoadedModel, text: str, layer: int, mapped: torch.Tensor, source_offsets: list[tuple[int, int]]
) -> tuple[list[float | None], float | None]:
    """Cosine between each mapped state and the target's own state at ``layer`` for the token ending at the same
    character (None where no target token ends there), and their mean."""
    native = encode(target, [text], [layer])[0]
    si, ti = pair_indices(source_offsets, native.offsets)
    per: list[float | None] = [None] * len(source_offsets)
    if si:
        cos = torch.nn.functional.cosine_similarity(mapped[si].float(), native.states[layer][ti].float())
        for k, c in zip(si, cos.tolist(), strict=True):
            per[k] = c
    values = [c for c in per if c is not None]
    return per, (sum(values) / len(values) if values else None)

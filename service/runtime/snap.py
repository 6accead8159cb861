"""Pull states mapped into a target's input embeddings toward the target's own vocabulary.

A map into the target's input embeddings (layer 0) hands the target vectors that lie between the rows of its
embedding table: a least-squares or trained map blurs rare tokens (names, numbers) toward an average of similar
ones, and the target, which has only ever read table rows there, reads them as other tokens. ``toward_vocabulary``
moves each mapped state a share ``weight`` of the way to its nearest row (Euclidean, the rows as the target reads
them, with its embedding scale): 0 leaves the map's output as it is, 1 replaces it by that row. Which share works
best is a property of the map, chosen by ``fit`` on its proxy and stored with the map (``fit_info["snap"]``).

Deeper, the same correction still applies: the target's residual stream carries each token's input embedding up
unchanged (every block adds to it), so a state mapped into layer ℓ > 0 holds a token-identity part that a map into
layer 0 reads out (``Aligner.readout``). ``toward_vocabulary`` with ``tokens`` (that readout) moves the state by
``weight`` times (nearest row − readout): exactly the change the snap makes at layer 0, carried up to ℓ.
"""

from __future__ import annotations

import torch

from service.runtime.loading import LoadedModel

# Rows of states compared with the whole table at once: (chunk, vocabulary) scores, 64 MiB for a 262k vocabulary.
_CHUNK = 64


def embedding_scale(target: LoadedModel) -> float:
    """The factor the target's embedding module applies to its table rows (Gemma's sqrt(d); 1 for most models)."""
    scale = getattr(target.stack.embed_tokens, "embed_scale", 1.0)
    return float(scale.item() if isinstance(scale, torch.Tensor) else scale)


@torch.no_grad()
def nearest_rows(target: LoadedModel, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """The index of the nearest (Euclidean) row of the target's input-embedding table to each state (n, d); with
    ``candidates`` (token ids), the nearest among those rows only."""
    weight = target.stack.embed_tokens.weight
    if candidates is not None:
        weight = weight[candidates.to(weight.device)]
    scale = embedding_scale(target)
    # ‖y − s·w‖² = ‖y‖² − 2s·y·w + s²‖w‖²: the first term does not change the argmin.
    norms = torch.linalg.vector_norm(weight, dim=1, dtype=torch.float32) ** 2 * scale**2
    out = []
    for start in range(0, len(states), _CHUNK):
        y = states[start : start + _CHUNK].detach().to(device=weight.device, dtype=weight.dtype)
        scores = norms - 2 * scale * (y @ weight.T).float()
        out.append(scores.argmin(dim=1))
    found = torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=weight.device)
    return found if candidates is None else candidates.to(found.device)[found]


def toward_vocabulary(
    target: LoadedModel,
    states: torch.Tensor,
    weight: float,
    candidates: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """``states`` (n, d) moved ``weight`` of the way to their nearest rows of the target's input-embedding table (among
    ``candidates`` only, when given), in the states' dtype and device; ``weight`` 0 returns them unchanged. The rows
    are constants: a gradient reaches ``states`` scaled by 1 − ``weight``. With ``tokens`` (n, d: the states'
    token-identity part as input embeddings, for states of a deeper layer) the nearest rows are ``tokens``' and the
    states move by ``weight`` × (row − ``tokens``)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"a snap weight is a share of the way to the nearest embedding row, in [0, 1], got {weight}")
    if weight == 0.0 or len(states) == 0:
        return states
    if tokens is not None and tokens.shape != states.shape:
        raise ValueError(f"tokens must have the states' shape {tuple(states.shape)}, got {tuple(tokens.shape)}")
    with torch.no_grad():
        ids = nearest_rows(target, states if tokens is None else tokens, candidates)
        rows = target.stack.embed(ids[None])[0].to(device=states.device, dtype=states.dtype)
    if tokens is None:
        return torch.lerp(states, rows, weight)  # exact at 1: the rows themselves
    return states + weight * (rows - tokens.to(device=states.device, dtype=states.dtype))

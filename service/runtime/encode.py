"""Encode texts with a model: per-token hidden states at any set of layers, with token ids and character spans.

Every sequence starts with the model's start token (its BOS, or end-of-text for models without one); that position
is an attention sink with an outsized norm, so it is run but not returned. Batches are right-padded and masked, and
the forward stops at the deepest requested layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from service.runtime.loading import LoadedModel
from service.runtime.stack import KVCache


@dataclass
class Encoded:
    """One text: ids (T,), spans [(start, end)] * T, and states {layer: (T, d)} (start token left out)."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    states: dict[int, torch.Tensor]

    def at(self, layers: int | tuple[int, ...]) -> torch.Tensor:
        """The states at one layer, or at several concatenated per token in the given order (T, sum of widths)."""
        if isinstance(layers, int):
            return self.states[layers]
        return torch.cat([self.states[layer] for layer in layers], dim=-1)


def check_layers(model: LoadedModel, layers: list[int]) -> list[int]:
    bad = [layer for layer in layers if not 0 <= layer <= model.n_layers]
    if bad or not layers:
        raise ValueError(f"layers must be a non-empty list in [0, {model.n_layers}] for {model.name}, got {layers}")
    return sorted(set(layers))


@torch.no_grad()
def encode(model: LoadedModel, texts: list[str], layers: list[int], batch_size: int = 8) -> list[Encoded]:
    """Hidden states of every text at ``layers`` (transformers' ``hidden_states`` numbering; layer N is after the
    final norm, as transformers returns it)."""
    wanted = check_layers(model, layers)
    stack = model.stack
    deepest = max(wanted)
    out: list[Encoded] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        tokenized = [model.tokenize(t) for t in chunk]
        for ids_, _ in tokenized:
            model.check_positions(1 + len(ids_), f"a text of {len(ids_)} tokens for {model.name}")
        width = 1 + max(len(ids) for ids, _ in tokenized)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        valid = torch.zeros(len(chunk), width, dtype=torch.bool)
        for i, (row, _) in enumerate(tokenized):
            ids[i, 0] = model.start_token_id
            ids[i, 1 : 1 + len(row)] = torch.tensor(row, dtype=torch.long)
            valid[i, : 1 + len(row)] = True
        ids, valid = ids.to(stack.device), valid.to(stack.device)
        positions = torch.arange(width, device=stack.device)[None].expand(len(chunk), -1)
        _, captured = stack.run(
            stack.embed(ids),
            0,
            min(deepest, stack.n_layers),
            positions,
            valid,
            KVCache.empty(stack.n_layers),
            capture=set(wanted),
        )
        if deepest == stack.n_layers:
            captured[deepest] = stack.norm(captured[deepest])
        for i, (row, spans) in enumerate(tokenized):
            states = {layer: captured[layer][i, 1 : 1 + len(row)].float().cpu() for layer in wanted}
            out.append(Encoded(chunk[i], row, spans, states))
    return out

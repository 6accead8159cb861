"""Run a transformers decoder block by block, with explicit positions and a KV cache whose layers may differ.

Layer convention, used everywhere in this project: layer ℓ ∈ [0, N] is transformers' ``hidden_states[ℓ]``. ℓ = 0 is
the embedding output (for Gemma3 after its embedding scale), ℓ = k is the output of block k (before the final norm).
"Inject at ℓ" means the given states stand in for ``hidden_states[ℓ]`` and blocks ℓ+1..N (module indices ℓ..N-1)
process them.

Handing states over needs what ``model.forward`` cannot do: some blocks see tokens that others never see (``replace``
leaves blocks <= ℓ blind to the prefix), so each block keeps its own keys, their absolute positions and a validity
flag, and every block gets its own mask (causal by position, sliding window where the model has one). Rotary
embeddings come from the model's own rotary module per layer type (Llama 3.1 scaling, Gemma3 local/global bases).
Where a model keeps these parts and how its blocks are windowed comes from its family adapter
(``service.runtime.families``: Llama, Mistral, Qwen2, Qwen3, Gemma 3 text).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from service.runtime.families import family_for


@dataclass
class LayerCache:
    """Per-block keys and values, their absolute positions (B, K) and validity (B, K)."""

    keys: torch.Tensor | None = None  # (B, kv_heads, K, head_dim)
    values: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # (B, K) long
    valid: torch.Tensor | None = None  # (B, K) bool


@dataclass
class KVCache:
    """The cache object handed to transformers' attention modules: they only call ``update``.

    Entries are never reordered or evicted; masks select what each query may see, so the order in which segments
    reach a block does not matter.
    """

    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([LayerCache() for _ in range(n_layers)])

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[layer_idx]
        if layer.keys is None or layer.values is None:
            layer.keys, layer.values = key_states, value_states
        else:
            layer.keys = torch.cat([layer.keys, key_states], dim=-2)
            layer.values = torch.cat([layer.values, value_states], dim=-2)
        return layer.keys, layer.values

    def add_positions(self, layer_idx: int, positions: torch.Tensor, valid: torch.Tensor) -> LayerCache:
        """Record the positions of the tokens about to enter a block (before the block's attention appends K/V)."""
        layer = self.layers[layer_idx]
        if layer.positions is None or layer.valid is None:
            layer.positions, layer.valid = positions, valid
        else:
            layer.positions = torch.cat([layer.positions, positions.to(layer.positions.device)], dim=1)
            layer.valid = torch.cat([layer.valid, valid.to(layer.valid.device)], dim=1)
        return layer

    def length(self, layer_idx: int) -> int:
        positions = self.layers[layer_idx].positions
        return 0 if positions is None else positions.shape[1]


def block_mask(
    q_pos: torch.Tensor, q_valid: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Boolean attention mask (B, 1, Q, K), True = may attend.

    A valid query sees valid keys at positions <= its own (and within ``window`` of it: q − k < window, as
    transformers' sliding-window overlay). Padding queries may see everything: their outputs are discarded, and a row
    with no visible key would make SDPA produce NaN, which would then leak through 0 × NaN into nothing else but is
    still best avoided.
    """
    allowed = k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])
    if window is not None:
        allowed &= (q_pos[:, :, None] - k_pos[:, None, :]) < window
    allowed |= ~q_valid[:, :, None]
    return allowed[:, None]


class LayerStack:
    """Block-level access to a causal LM: embed, run a range of blocks, read logits."""

    def __init__(self, model: Any) -> None:
        # transformers models resolve submodules dynamically; typed as Any rather than casting at every access.
        self.model = model
        self.config = model.config
        self.family = family_for(model)
        parts = self.family.parts(model)
        self.embed_tokens: Any = parts.embed_tokens
        self.layers: Any = parts.layers
        self.norm: Any = parts.norm
        self.rotary_emb: Any = parts.rotary_emb
        self.lm_head: Any = parts.lm_head
        self.n_layers = len(self.layers)
        self.hidden_size = int(self.config.hidden_size)
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        self.layer_types: list[str] = list(
            getattr(self.config, "layer_types", None) or ["full_attention"] * self.n_layers
        )
        self._rotary_takes_type = "layer_type" in inspect.signature(self.rotary_emb.forward).parameters
        self.windows: list[int | None] = self.family.windows(self.config, self.n_layers)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> hidden_states[0] (B, T, d)."""
        with torch.no_grad():
            return self.embed_tokens(ids.to(self.device))

    def _rotary(self, h: torch.Tensor, pos: torch.Tensor, layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rotary_takes_type:
            return self.rotary_emb(h, pos, layer_type)
        return self.rotary_emb(h, pos)

    def run(
        self,
        h: torch.Tensor,
        start: int,
        stop: int,
        positions: torch.Tensor,
        valid: torch.Tensor,
        cache: KVCache,
        capture: set[int] | None = None,
        grad: bool = False,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run blocks ``start+1..stop`` on h = hidden_states[start] (B, T, d); returns hidden_states[stop].

        ``positions`` (B, T) are absolute positions, ``valid`` (B, T) marks real tokens. ``capture`` names layers ℓ
        in [start, stop] whose states to return. With ``grad`` the blocks record autograd history, so a loss on the
        output reaches the input states (a map trained through this model); the model's own weights are the
        caller's to freeze (``frozen``).
        """
        with torch.set_grad_enabled(grad):
            captured: dict[int, torch.Tensor] = {}
            if capture and start in capture:
                captured[start] = h
            rotary: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
            for k in range(start, stop):
                layer = self.layers[k]
                dev = next(layer.parameters()).device
                h = h.to(dev)
                pos, ok = positions.to(dev), valid.to(dev)
                entry = cache.add_positions(k, pos, ok)
                assert entry.positions is not None and entry.valid is not None  # set just above
                mask = block_mask(pos, ok, entry.positions, entry.valid, self.windows[k])
                key = (self.layer_types[k], dev)
                if key not in rotary:
                    rotary[key] = self._rotary(h, pos, self.layer_types[k])
                h = layer(
                    h, attention_mask=mask, position_ids=pos, past_key_values=cache, position_embeddings=rotary[key]
                )
                if isinstance(h, tuple):  # older layer implementations return (hidden, ...)
                    h = h[0]
                if capture and k + 1 in capture:
                    captured[k + 1] = h
            return h, captured

    def logits(self, h: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """hidden_states[N] (..., d) -> next-token logits (..., vocab) in float32."""
        with torch.set_grad_enabled(grad):
            h = h.to(self.norm.weight.device)
            out = self.lm_head(self.norm(h).to(self.lm_head.weight.device)).float()
            if self.softcap:
                out = torch.tanh(out / self.softcap) * self.softcap
            return out


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` with its parameters excluded from autograd (restored afterwards): gradients flow through it to
    its inputs, never into its weights, which stay bit-identical."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)

"""The vLLM model class behind the source encoder: a decoder cut after its deepest wanted block, returning the
residual stream at the wanted layers for every token (vLLM's pooling runner, task ``token_embed``, no head).

vLLM imports this module inside its own processes, through the names ``service.backends.vllm_source.register``
gives it. The checkpoint is read as usual, minus the weights of the blocks past the cut and of the LM head. The
engine's ``hf_overrides`` carry the cut and the layers (``interlingua_layers``); layer numbering is transformers'
``hidden_states``: 0 is the input embeddings (Gemma's scale included), l the residual stream after block l, and the
last layer is after the final norm.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.pooler import DispatchPooler
from vllm.model_executor.layers.pooler.tokwise.heads import TokenEmbeddingPoolerHead
from vllm.model_executor.layers.pooler.tokwise.methods import AllPool
from vllm.model_executor.layers.pooler.tokwise.poolers import TokenPooler
from vllm.model_executor.models.gemma3 import Gemma3Model
from vllm.model_executor.models.interfaces_base import VllmModelForPooling
from vllm.model_executor.models.llama import LlamaModel
from vllm.model_executor.models.qwen2 import Qwen2Model
from vllm.model_executor.models.qwen3 import Qwen3Model
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class _LayerStates(nn.Module, VllmModelForPooling):
    """Runs the first blocks of a decoder and returns the wanted layers' states side by side, (tokens, k * hidden)."""

    decoder: type[nn.Module]  # the family's vLLM decoder (embeddings, blocks, final norm)
    is_pooling_model = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.layers = sorted(int(v) for v in config.interlingua_layers)
        self.total = int(config.interlingua_total_layers)  # the checkpoint's block count (the last layer is normed)
        self.config = config
        self.model = self.decoder(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        head = TokenEmbeddingPoolerHead(head_dtype=vllm_config.model_config.head_dtype, activation=None)
        self.pooler = DispatchPooler({"token_embed": TokenPooler(AllPool(), head)})

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)  # type: ignore[operator]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)  # type: ignore[arg-type]
        residual: torch.Tensor | None = None
        out = [hidden] if 0 in self.layers else []
        for index, block in enumerate(self.model.layers[: self.layers[-1]], start=1):  # type: ignore[index]
            hidden, residual = block(positions, hidden, residual, **kwargs)
            if index in self.layers:
                if index == self.total:  # the last layer is reported after the final norm
                    out.append(self.model.norm(hidden, residual)[0])  # type: ignore[operator]
                else:
                    out.append(hidden + residual)
        return torch.cat(out, dim=-1)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        kept = self.config.num_hidden_layers

        def wanted(name: str) -> bool:
            block = _BLOCK.search(name)
            return not name.startswith("lm_head.") and (block is None or int(block.group(1)) < kept)

        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["lm_head."])
        return loader.load_weights((n, w) for n, w in weights if wanted(n))


class LlamaStates(_LayerStates):
    decoder = LlamaModel


class Qwen2States(_LayerStates):
    decoder = Qwen2Model


class Qwen3States(_LayerStates):
    decoder = Qwen3Model


class Gemma3States(_LayerStates):
    decoder = Gemma3Model

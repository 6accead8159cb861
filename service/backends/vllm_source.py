"""The source model's per-token states from vLLM: a pooling engine over a decoder cut after its deepest wanted layer.

vLLM has no built-in way to read a middle layer for every token of a prompt: truncating a model with
``hf_overrides={"num_hidden_layers": L}`` still applies the final norm, L2-normalises pooled tokens and fails on the
checkpoint's later blocks, and the ``extract_hidden_states`` speculative method runs the full forward, hands states
over through files and turns off chunked prefill. So the engine runs this project's own model class
(``vllm_states_model``), registered under the ``vllm.general_plugins`` entry point (vLLM loads it in each of its
processes): only the blocks up to the deepest wanted layer are built and loaded, the residual stream is returned
unnormalised, and one engine serves every source layer the maps read. Tokenisation stays with the model's own
tokenizer, so ids, spans and states line up with the transformers encoder's (``service.runtime.encode``).
"""

from __future__ import annotations

from typing import Any

import torch

from service.backends.vllm_engine import _import_vllm, engine_options
from service.runtime.encode import Encoded, check_layers
from service.runtime.loading import LoadedModel

# The transformers architecture -> this project's vLLM class for it (in vllm_states_model).
STATES_CLASSES = {
    "LlamaForCausalLM": "LlamaStates",
    "MistralForCausalLM": "LlamaStates",  # vLLM runs Mistral checkpoints with its Llama classes
    "Qwen2ForCausalLM": "Qwen2States",
    "Qwen3ForCausalLM": "Qwen3States",
    "Gemma3ForCausalLM": "Gemma3States",
}


def architecture_name(cls: str) -> str:
    return f"Interlingua{cls}"


def register() -> None:
    """The ``vllm.general_plugins`` entry point: make the states classes known to vLLM's model registry (lazily, by
    import path, so no vLLM model module is imported before vLLM asks for it). Safe to call more than once."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for cls in sorted(set(STATES_CLASSES.values())):
        if architecture_name(cls) not in known:
            ModelRegistry.register_model(architecture_name(cls), f"service.backends.vllm_states_model:{cls}")


class VLLMEncoder:
    """Per-token states of one source model at a fixed set of layers, computed by a vLLM pooling engine."""

    name = "vllm"

    def __init__(self, source: LoadedModel, layers: list[int], **options: Any) -> None:
        """``options``: ``vllm_engine.engine_options``' keywords (dtype, seed and the ``VLLMSettings`` fields)."""
        vllm = _import_vllm()
        if source.architecture not in STATES_CLASSES:
            raise ValueError(
                f"the vllm encoder cannot run {source.name} ({source.architecture}); it runs "
                f"{', '.join(sorted(STATES_CLASSES))}: use the transformers encoder for this model"
            )
        self.source = source
        self.layers = check_layers(source, layers)
        register()
        config = source.model.config
        cut = max(1, self.layers[-1])  # vLLM builds at least one block
        overrides: dict[str, Any] = {
            "architectures": [architecture_name(STATES_CLASSES[source.architecture])],
            "num_hidden_layers": cut,
            "interlingua_layers": self.layers,
            "interlingua_total_layers": source.n_layers,
        }
        if isinstance(getattr(config, "layer_types", None), list):  # per-block attention kinds follow the cut
            overrides["layer_types"] = list(config.layer_types)[:cut]
        self.llm = vllm.LLM(
            **engine_options(source, **options),
            runner="pooling",
            hf_overrides=overrides,
            # Cached prefix blocks are not run again, so their tokens would have no states: every prompt runs whole.
            enable_prefix_caching=False,
        )

    def covers(self, layers: list[int]) -> bool:
        return set(layers) <= set(self.layers)

    def encode(self, texts: list[str], layers: list[int]) -> list[Encoded]:
        """Like ``service.runtime.encode.encode``: states of every text's tokens (start token left out)."""
        wanted = check_layers(self.source, layers)
        if not self.covers(wanted):
            raise ValueError(f"this vllm encoder serves layers {self.layers} of {self.source.name}, not {wanted}")
        model = self.source
        tokenized = [model.tokenize(t) for t in texts]
        for ids, _ in tokenized:
            model.check_positions(1 + len(ids), f"a text of {len(ids)} tokens for {model.name}")
        prompts = [{"prompt_token_ids": [model.start_token_id, *ids]} for ids, _ in tokenized]
        outputs = self.llm.encode(prompts, pooling_task="token_embed", use_tqdm=False)
        d = model.hidden_size
        encoded = []
        for text, (ids, offsets), out in zip(texts, tokenized, outputs, strict=True):
            data = torch.as_tensor(out.outputs.data)[1:]  # (T, k * d), the start token dropped
            states = {layer: data[:, i * d : (i + 1) * d] for i, layer in enumerate(self.layers) if layer in wanted}
            encoded.append(Encoded(text, ids, offsets, states))
        return encoded

    def close(self) -> None:
        """Stop the engine's processes (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

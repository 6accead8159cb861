"""Tiny random-weight models and real (trained-here) tokenizers, built from configs: no hub, no network.

Head dims are 64 (as vLLM's CPU attention needs); sliding windows are short so that they matter in short tests.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

_VOCAB = """
the a of and to in is was on at by for with from river town mill bridge harbor council founded built named after
year north south east west old new small large stone wooden market tower road school Varn Oskel Tamsin Brede Quill
Halvard Ysolde Marrow Penwick Doravel 1821 1874 1903 1956 question answer
"""
WORDS = tuple(_VOCAB.split())


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(n)]


def make_tokenizer(vocab_size: int, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the tiny corpus (vocab_size sets how words split)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _common(vocab: int, layers: int, hidden: int) -> dict[str, object]:
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }


def make_model(arch: str, vocab: int, layers: int = 4, hidden: int = 128, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    common = _common(vocab, layers, hidden)
    model: PreTrainedModel
    if arch == "llama":
        rope = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_theta": 10000.0,
        }
        model = LlamaForCausalLM(LlamaConfig(**common, rope_parameters=rope))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=6))
    elif arch == "gemma3":
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(**common, sliding_window=6, layer_types=types, query_pre_attn_scalar=64)
        )
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    elif arch == "qwen3":
        # Sliding blocks below max_window_layers, full ones above: the windows must follow layer_types.
        model = Qwen3ForCausalLM(Qwen3Config(**common, use_sliding_window=True, sliding_window=6, max_window_layers=2))
    else:
        raise ValueError(arch)
    # Random init with std 0.02 gives near-uniform logits; larger weights make greedy choices decisive and distinct.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    return model.eval()


def save_tiny(path: Path, arch: str, vocab_size: int, seed: int = 0, layers: int = 4) -> Path:
    """Save a tiny model + tokenizer folder that ``load_model`` reads like any checkpoint."""
    tok = make_tokenizer(vocab_size, seed=seed)
    model = make_model(arch, len(tok), layers=layers, seed=seed)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def rotated_copy(model: PreTrainedModel, q: torch.Tensor) -> PreTrainedModel:
    """A Llama-style model whose hidden space is ``model``'s rotated by the orthogonal ``q``: its states are
    ``model``'s states times ``q`` at every layer, and its logits are identical (RMS norms with uniform weights are
    rotation invariant, so only the matrices that read or write the residual stream change)."""
    import copy

    rotated = copy.deepcopy(model)
    with torch.no_grad():
        inner = rotated.model
        inner.embed_tokens.weight.copy_(inner.embed_tokens.weight @ q)
        rotated.lm_head.weight.copy_(rotated.lm_head.weight @ q)
        for layer in inner.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.weight.copy_(lin.weight @ q)
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight.copy_(lin.weight @ q)
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.copy_(q.T @ lin.weight)
    return rotated

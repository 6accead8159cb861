"""The vLLM source encoder against the transformers encoder (``service.runtime.encode``) on tiny Llama, Gemma 3 and
Qwen 3 models: the same token ids and spans, and the same states at the input embeddings, at middle layers and at the
last layer (after the final norm) within float32 tolerance, for a batch of texts of different lengths."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from service.runtime.encode import encode
from service.runtime.loading import LoadedModel, load_model
from tests.tiny import make_tokenizer
from tests.vllm.conftest import require_vllm

pytestmark = pytest.mark.slow

TEXTS = [
    "the old mill on the river was built in 1821 by Varn",
    "Oskel founded the market",
    "the stone bridge to the north harbor was named after Tamsin Brede in 1903, and rebuilt twice since",
]


def qwen3_full_attention(path: Path) -> Path:
    """A tiny Qwen 3 with full attention in every block (vLLM refuses Qwen 3 configs that mix sliding blocks in)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.tiny import _common

    tok = make_tokenizer(450, seed=4)
    torch.manual_seed(4)
    model = Qwen3ForCausalLM(Qwen3Config(**_common(len(tok), 4, 128), use_sliding_window=False))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module", params=["llama", "gemma3", "qwen3"])
def model(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    require_vllm()
    if request.param == "qwen3":
        folder = qwen3_full_attention(tmp_path_factory.mktemp("qwen3-full") / "qwen3")
    else:
        folder = tiny_dirs[request.param]
    return load_model(str(folder), name=request.param)


def test_vllm_states_equal_the_transformers_encoder(model: LoadedModel) -> None:
    from service.backends.vllm_source import VLLMEncoder

    assert model.n_layers == 4
    layers = [0, 1, 3, 4]  # the input embeddings, middle layers, the last layer (after the final norm)
    engine = VLLMEncoder(model, layers)
    try:
        got = engine.encode(TEXTS, layers)
        # A subset of the engine's layers is served by the same engine.
        subset = engine.encode(TEXTS[:1], [3])
    finally:
        engine.close()
    want = encode(model, TEXTS, layers)
    for g, w in zip(got, want, strict=True):
        assert (g.ids, g.offsets) == (w.ids, w.offsets)
        assert sorted(g.states) == layers
        for layer in layers:
            assert g.states[layer].shape == w.states[layer].shape == (len(w.ids), model.hidden_size)
            torch.testing.assert_close(g.states[layer], w.states[layer], rtol=1e-4, atol=1e-4)
    assert list(subset[0].states) == [3]
    torch.testing.assert_close(subset[0].states[3], want[0].states[3], rtol=1e-4, atol=1e-4)
    assert engine.covers([1, 4]) and not engine.covers([2])


def test_unsupported_architecture_and_layers_are_refused_before_any_engine(tiny: dict[str, LoadedModel]) -> None:
    require_vllm()
    from service.backends.vllm_source import VLLMEncoder

    other = copy.copy(tiny["llama"])
    other.model = copy.copy(other.model)
    other.model.config = copy.deepcopy(other.model.config)
    other.model.config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match=r"cannot run llama \(GPT2LMHeadModel\); it runs .*LlamaForCausalLM"):
        VLLMEncoder(other, [2])
    with pytest.raises(ValueError, match=r"layers must be a non-empty list in \[0, 4\]"):
        VLLMEncoder(tiny["llama"], [9])

"""The runtime on the real pair (smollm2 = SmolLM2-135M-Instruct, gemma3 = Gemma 3 270M), converted from GGUF."""

from __future__ import annotations

import pytest
import torch

from service.runtime.encode import encode
from service.runtime.generate import Prefill, SamplingParams, generate
from service.runtime.loading import LoadedModel
from service.runtime.modes import NATIVE, get_mode
from service.runtime.prompt import Prompt

pytestmark = pytest.mark.real

CONTEXT = "The Eiffel Tower is located in Paris, the capital of France. It was completed in 1889."
QUESTION = "\nQuestion: In which year was the Eiffel Tower completed?\nAnswer:"
PARAMS = SamplingParams(max_new_tokens=16, stop=["\n"])


def test_converted_models_match_their_facts(real_pair: dict[str, LoadedModel]) -> None:
    s, g = real_pair["smollm2"], real_pair["gemma3"]
    assert (s.architecture, s.n_layers, s.hidden_size) == ("LlamaForCausalLM", 30, 576)
    assert (g.architecture, g.n_layers, g.hidden_size) == ("Gemma3ForCausalLM", 18, 640)
    assert g.tokenizer.convert_ids_to_tokens(g.start_token_id) == "<bos>"
    assert s.fingerprint != g.fingerprint


@pytest.mark.parametrize("alias", ["smollm2", "gemma3"])
def test_native_answers_and_stack_matches_transformers(real_pair: dict[str, LoadedModel], alias: str) -> None:
    m = real_pair[alias]
    ids, _ = m.tokenize(CONTEXT)
    sfx, _ = m.tokenize(QUESTION)
    out = generate(m, [Prompt(NATIVE, sfx, prefix_ids=ids)], PARAMS)[0]
    assert "1889" in out.text
    full = torch.tensor([[m.start_token_id, *ids, *sfx]])
    ref = m.model(full).logits[0, -1]
    torch.testing.assert_close(Prefill(m, [Prompt(NATIVE, sfx, prefix_ids=ids)]).run()[0][0], ref, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("alias", ["smollm2", "gemma3"])
def test_identity_handover_reproduces_native_on_real_models(real_pair: dict[str, LoadedModel], alias: str) -> None:
    m = real_pair[alias]
    enc = encode(m, [CONTEXT], list(range(m.n_layers)))[0]
    sfx, _ = m.tokenize(QUESTION)
    native = Prompt(NATIVE, sfx, prefix_ids=enc.ids)
    want = generate(m, [native], PARAMS)[0].token_ids
    want_logits = Prefill(m, [native]).run()[0][0]
    layers = sorted({0, 1, m.n_layers // 3, m.n_layers // 2, m.n_layers - 1})
    prompts = [
        Prompt(get_mode("replace"), sfx, layer=0, states=enc.states[0]),
        Prompt(get_mode("embeds"), sfx, states=enc.states[0]),
    ]
    prompts += [
        Prompt(get_mode("full"), sfx, layer=k, states=enc.states[k], layer_states={j: enc.states[j] for j in range(k)})
        for k in layers
    ]
    for p in prompts:
        assert generate(m, [p], PARAMS)[0].token_ids == want, (p.mode, p.layer)
        torch.testing.assert_close(Prefill(m, [p]).run()[0][0], want_logits, atol=2e-3, rtol=1e-4)

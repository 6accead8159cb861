"""Oracle tests of the runtime: quantities whose expected values are known independently of the code under test.

- the block-by-block stack reproduces transformers' own forward (logits and every hidden state);
- native greedy decoding equals transformers' ``generate``;
- identity: handing a model its own states (replace at 0, embeds, full at every layer) reproduces native exactly;
- replace at ℓ > 0 leaves the prefix's states in blocks > ℓ equal to native;
- decoding with the per-layer caches equals recomputing the whole forward at every step;
- a batch of different lengths equals one-by-one generation.
"""

from __future__ import annotations

import pytest
import torch

from service.runtime.encode import encode
from service.runtime.generate import Prefill, SamplingParams, generate
from service.runtime.loading import LoadedModel
from service.runtime.modes import NATIVE, get_mode
from service.runtime.prompt import Prompt
from service.runtime.stack import KVCache
from tests.conftest import ARCHS

TEXT = "the old mill of Varn was built in 1874 by Quill Halvard"
SUFFIX = " question: who built the mill? answer:"
GREEDY = SamplingParams(max_new_tokens=8)


def own_states(m: LoadedModel, text: str = TEXT) -> tuple[list[int], dict[int, torch.Tensor]]:
    enc = encode(m, [text], list(range(m.n_layers + 1)))[0]
    return enc.ids, enc.states


def prompt_for(m: LoadedModel, mode: str, layer: int, text: str = TEXT, suffix: str = SUFFIX) -> Prompt:
    ids, states = own_states(m, text)
    sfx, _ = m.tokenize(suffix)
    if mode == "native":
        return Prompt(NATIVE, sfx, prefix_ids=ids)
    if mode == "full":
        return Prompt(
            get_mode("full"), sfx, layer=layer, states=states[layer], layer_states={k: states[k] for k in range(layer)}
        )
    if mode == "last_token":
        return Prompt(get_mode("last_token"), sfx, layer=layer, last_state=states[layer][-1])
    return Prompt(get_mode(mode), sfx, layer=layer, states=states[layer])


@pytest.mark.parametrize("arch", ARCHS)
def test_stack_reproduces_transformers_forward(tiny: dict[str, LoadedModel], arch: str) -> None:
    m = tiny[arch]
    dev = m.stack.device
    ids = torch.tensor([[m.start_token_id, *m.tokenize(TEXT + SUFFIX)[0]]], device=dev)
    ref = m.model(ids, output_hidden_states=True)
    valid = torch.ones_like(ids, dtype=torch.bool)
    pos = torch.arange(ids.shape[1], device=dev)[None]
    h, cap = m.stack.run(
        m.stack.embed(ids), 0, m.n_layers, pos, valid, KVCache.empty(m.n_layers), capture=set(range(m.n_layers))
    )
    torch.testing.assert_close(m.stack.logits(h), ref.logits, atol=1e-5, rtol=1e-5)
    for k in range(m.n_layers):
        torch.testing.assert_close(cap[k], ref.hidden_states[k], atol=1e-5, rtol=1e-5)
    # encode() returns transformers' numbering, including the final-norm output at N, without the start token.
    states = own_states(m, TEXT + SUFFIX)[1]
    for k in range(m.n_layers + 1):
        torch.testing.assert_close(states[k], ref.hidden_states[k][0, 1:].cpu(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_native_greedy_equals_transformers_generate(tiny: dict[str, LoadedModel], arch: str) -> None:
    m = tiny[arch]
    p = prompt_for(m, "native", 0)
    ours = generate(m, [p], SamplingParams(max_new_tokens=12))[0]
    prompt = torch.tensor([[m.start_token_id, *(p.prefix_ids or []), *p.suffix_ids]], device=m.stack.device)
    ref = m.model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.token_ids == ref[0, prompt.shape[1] :].tolist()[: len(ours.token_ids)]
    assert len(ours.token_ids) >= 1


def prefill_logits(m: LoadedModel, prompt: Prompt) -> torch.Tensor:
    return Prefill(m, [prompt]).run()[0][0]


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_handover_reproduces_native(tiny: dict[str, LoadedModel], arch: str) -> None:
    m = tiny[arch]
    native = prompt_for(m, "native", 0)
    want = generate(m, [native], GREEDY)[0].token_ids
    want_logits = prefill_logits(m, native)
    cases = [("replace", 0), ("embeds", 0)] + [("full", layer) for layer in range(m.n_layers)]
    for mode, layer in cases:
        p = prompt_for(m, mode, layer)
        assert generate(m, [p], GREEDY)[0].token_ids == want, (mode, layer)
        torch.testing.assert_close(prefill_logits(m, p), want_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_replace_keeps_prefix_states_above_the_injection_layer(tiny: dict[str, LoadedModel], arch: str) -> None:
    m = tiny[arch]
    layers = set(range(m.n_layers))
    _, _, native_cap = Prefill(m, [prompt_for(m, "native", 0)]).run(capture=layers)
    for inject in range(1, m.n_layers):
        p = prompt_for(m, "replace", inject)
        _, _, cap = Prefill(m, [p]).run(capture=set(range(inject, m.n_layers)))
        n = p.prefix_len
        for k in range(inject + 1, m.n_layers):
            torch.testing.assert_close(cap[k][0, :n], native_cap[k][0, :n], atol=1e-5, rtol=1e-5)
    # ... while the suffix, which blocks <= inject read without the prefix, does differ from native (a short suffix:
    # with sliding windows a long one would not reach back to the prefix at all).
    short = " answer:"
    assert not torch.allclose(
        prefill_logits(m, prompt_for(m, "replace", m.n_layers - 1, suffix=short)),
        prefill_logits(m, prompt_for(m, "native", 0, suffix=short)),
        atol=1e-3,
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_full_recomputation(tiny: dict[str, LoadedModel], arch: str) -> None:
    m = tiny[arch]
    p = prompt_for(m, "replace", 2)
    out = generate(m, [p], SamplingParams(max_new_tokens=10))[0]
    # Recompute: at every step, prefill from scratch with the generated tokens appended to the suffix.
    suffix = list(p.suffix_ids)
    for token in out.token_ids:
        q = Prompt(get_mode("replace"), suffix, layer=2, states=p.states)
        logits = prefill_logits(m, q)
        assert int(torch.argmax(logits)) == token
        suffix.append(token)
    cached_logits, recomputed = [], []
    for step in range(3):
        q = Prompt(get_mode("replace"), p.suffix_ids + out.token_ids[:step], layer=2, states=p.states)
        recomputed.append(prefill_logits(m, q))
    pre = Prefill(m, [p])
    logits, next_pos, _ = pre.run()
    cached_logits.append(logits[0])
    for step in range(2):
        dev = m.stack.device
        ids = torch.tensor([[out.token_ids[step]]], device=dev)
        h, _ = m.stack.run(
            m.stack.embed(ids),
            0,
            m.n_layers,
            torch.tensor([[next_pos[0] + step]], device=dev),
            torch.ones(1, 1, dtype=torch.bool, device=dev),
            pre.cache,
        )
        cached_logits.append(m.stack.logits(h[0, -1]))
    for a, b in zip(cached_logits, recomputed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode,layer", [("native", 0), ("replace", 2), ("full", 2), ("embeds", 0), ("last_token", 1)])
def test_batch_of_different_lengths_equals_one_by_one(
    tiny: dict[str, LoadedModel], arch: str, mode: str, layer: int
) -> None:
    m = tiny[arch]
    texts = [TEXT, "the bridge", "Ysolde Marrow founded the school of Penwick in the north in 1903 and the market"]
    suffixes = [SUFFIX, " answer:", ""] if mode != "last_token" else [SUFFIX, " answer:", " the"]
    prompts = [prompt_for(m, mode, layer, t, s) for t, s in zip(texts, suffixes, strict=True)]
    params = SamplingParams(max_new_tokens=6)
    batched = generate(m, prompts, params)
    single = [generate(m, [p], params)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    for i, p in enumerate(prompts):
        torch.testing.assert_close(Prefill(m, prompts).run()[0][i], prefill_logits(m, p), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_last_token_with_own_state_is_native_and_ops_differ(tiny: dict[str, LoadedModel], arch: str) -> None:
    m = tiny[arch]
    sfx, _ = m.tokenize(SUFFIX)
    # B's own state of its last prompt token, replaced into itself: nothing changes.
    _, states = own_states(m, SUFFIX)
    own = Prompt(get_mode("last_token"), sfx, layer=2, last_state=states[2][-1], op="replace")
    native = Prompt(NATIVE, sfx, prefix_ids=[])
    torch.testing.assert_close(prefill_logits(m, own), prefill_logits(m, native), atol=1e-4, rtol=1e-4)
    # Summing it in doubles the state; the mean of two equal states is that state.
    summed = Prompt(get_mode("last_token"), sfx, layer=2, last_state=states[2][-1], op="sum")
    mean = Prompt(get_mode("last_token"), sfx, layer=2, last_state=states[2][-1], op="mean")
    torch.testing.assert_close(prefill_logits(m, mean), prefill_logits(m, native), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(prefill_logits(m, summed), prefill_logits(m, native), atol=1e-3)


def test_an_unsupported_architecture_gets_one_clear_error() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from service.runtime.families import UnsupportedArchitectureError
    from service.runtime.stack import LayerStack

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=1, vocab_size=50))
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type 'gpt2'.*supported: llama, mistral, qwen2"):
        LayerStack(model)

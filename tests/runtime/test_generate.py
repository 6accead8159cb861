"""Decoding behaviour: sampling, stop strings, EOS, streaming, input checks, handover preparation, fingerprints."""

from __future__ import annotations

import pytest
import torch

from aligners import build
from aligners.store import matching_layer
from service.runtime.generate import SamplingParams, check_prompt, generate, nucleus, sample, stream_batch
from service.runtime.handover import LayerMap, prepare
from service.runtime.loading import LoadedModel, fingerprint, load_model
from service.runtime.modes import NATIVE, get_mode
from service.runtime.pairing import grid_indices
from service.runtime.prompt import Prompt
from tests.runtime.test_oracles import SUFFIX, TEXT, prompt_for


def test_seeded_sampling_is_reproducible_and_seed_dependent(tiny: dict[str, LoadedModel]) -> None:
    m = tiny["gemma3"]
    p = prompt_for(m, "replace", 1)
    runs = {
        seed: [
            generate(m, [p], SamplingParams(max_new_tokens=12, temperature=1.5, seed=seed))[0].token_ids
            for _ in range(2)
        ]
        for seed in (1, 2)
    }
    assert runs[1][0] == runs[1][1] and runs[2][0] == runs[2][1]
    assert runs[1][0] != runs[2][0]


def test_tiny_top_p_is_greedy(tiny: dict[str, LoadedModel]) -> None:
    m = tiny["llama"]
    p = prompt_for(m, "native", 0)
    greedy = generate(m, [p], SamplingParams(max_new_tokens=8))[0]
    nucleus = generate(m, [p], SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3))[0]
    assert nucleus.token_ids == greedy.token_ids


@pytest.mark.parametrize("sharpness", [0.5, 3.0, 10.0])
@pytest.mark.parametrize("top_p", [0.01, 0.5, 0.95, 0.999])
def test_nucleus_keeps_what_a_full_sort_keeps(sharpness: float, top_p: float) -> None:
    gen = torch.Generator().manual_seed(int(sharpness * 100 + top_p * 1000))
    probs = torch.softmax(sharpness * torch.randn(3000, generator=gen), dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)  # the textbook rule, over the whole vocabulary
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
    expected = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    got = nucleus(probs, top_p, first=40)  # a small first window: the flatter cases must look past it
    assert torch.equal(got > 0, expected > 0)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("top_p", [4.5e-165, 1e-46])
def test_a_vanishing_top_p_keeps_the_top_token(top_p: float) -> None:
    """top_p below float32's smallest number (4.5e-165 came in over HTTP and failed the request with a 500) keeps
    the most probable token, as any top_p does."""
    probs = torch.softmax(torch.tensor([1.0, 3.0, 2.5, -7.0]), dim=-1)
    kept = nucleus(probs, top_p)
    assert kept.nonzero().flatten().tolist() == [1]
    params = SamplingParams(max_new_tokens=1, temperature=1.0, top_p=top_p)
    assert {sample(torch.log(probs), params, torch.Generator().manual_seed(s)) for s in range(10)} == {1}


@pytest.mark.parametrize("temperature", [5e-324, 1e-45, 1e-30])
def test_a_vanishing_temperature_samples_the_greedy_token(temperature: float) -> None:
    """Temperatures below float32's smallest number (5e-324 came in over HTTP and failed the request with a 500)
    are the limit of sampling as the temperature falls: the most probable token, every draw."""
    logits = torch.tensor([1.0, 3.0, 2.5, float("-inf"), -7.0])
    params = SamplingParams(max_new_tokens=1, temperature=temperature, top_p=0.9)
    draws = {sample(logits, params, torch.Generator().manual_seed(seed)) for seed in range(20)}
    assert draws == {1}


def test_stop_string_truncates_and_streams_the_same_text(tiny: dict[str, LoadedModel]) -> None:
    m = tiny["mistral"]  # a small vocabulary: many short tokens, so the stop string spans token boundaries
    p = prompt_for(m, "native", 0)
    free = generate(m, [p], SamplingParams(max_new_tokens=16))[0]
    assert len(free.text) > 6
    stop = free.text[3:6]
    first = free.text.find(stop)
    stopped = generate(m, [p], SamplingParams(max_new_tokens=16, stop=[stop]))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:first]
    events = list(stream_batch(m, [p], [SamplingParams(max_new_tokens=16, stop=[stop])]))
    assert "".join(e.delta for e in events) == stopped.text
    assert events[-1].finished and events[-1].completion is not None
    assert sum(e.finished for e in events) == 1


def test_length_and_eos_finish_reasons(tiny: dict[str, LoadedModel]) -> None:
    m = tiny["llama"]
    p = prompt_for(m, "replace", 2)
    free = generate(m, [p], SamplingParams(max_new_tokens=5))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 5
    gen_config = m.model.generation_config
    saved = gen_config.eos_token_id
    try:
        gen_config.eos_token_id = free.token_ids[2]
        ended = generate(m, [p], SamplingParams(max_new_tokens=5))[0]
        ignored = generate(m, [p], SamplingParams(max_new_tokens=5, ignore_eos=True))[0]
    finally:
        gen_config.eos_token_id = saved
    assert ended.finish_reason == "stop"
    assert ended.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[2])]
    assert ignored.token_ids == free.token_ids


def test_bad_prompts_are_refused_before_model_work(tiny: dict[str, LoadedModel]) -> None:
    m = tiny["llama"]
    d, n = m.hidden_size, m.n_layers
    states = torch.zeros(3, d)
    cases = [
        (Prompt(get_mode("replace"), [5], layer=n, states=states), "layer must be in"),
        (Prompt(get_mode("replace"), [5], layer=1, states=torch.zeros(3, d + 1)), "states of shape"),
        (Prompt(get_mode("embeds"), [5], layer=1, states=states), "layer 0"),
        (Prompt(get_mode("full"), [5], layer=2, states=states, layer_states={0: states}), "layer_states for"),
        (Prompt(get_mode("last_token"), [], layer=1, last_state=torch.zeros(d)), "needs a suffix"),
        (Prompt(get_mode("last_token"), [5], layer=1, last_state=torch.zeros(d + 2)), "last_state of shape"),
        (Prompt(NATIVE, [5]), "prefix_ids"),
    ]
    for prompt, message in cases:
        with pytest.raises(ValueError, match=message):
            check_prompt(m, prompt)
    with pytest.raises(ValueError, match="unknown mode 'telepathy'"):
        get_mode("telepathy")  # a name becomes a mode where it comes in, or is refused there
    with pytest.raises(ValueError, match="share mode and layer"):
        generate(m, [prompt_for(m, "replace", 1), prompt_for(m, "replace", 2)], SamplingParams())
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, [prompt_for(m, "native", 0)], SamplingParams(max_new_tokens=0))


def test_prepare_maps_source_states_into_the_target(tiny: dict[str, LoadedModel]) -> None:
    src, tgt = tiny["llama"], tiny["gemma3"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, src.hidden_size, generator=g)
    y = torch.randn(64, tgt.hidden_size, generator=g)
    maps = [LayerMap(matching_layer(k, tgt.n_layers, src.n_layers), k, build("affine").fit(x, y)) for k in range(3)]
    for mode, use in [("replace", maps[2:]), ("embeds", maps[:1]), ("full", maps), ("last_token", maps[1:2])]:
        h = prepare(src, tgt, TEXT, SUFFIX, mode, use)  # type: ignore[arg-type]
        check_prompt(tgt, h.prompt)
        assert h.source_ids == src.tokenize(TEXT)[0]
        assert h.prompt.suffix_ids == tgt.tokenize(SUFFIX)[0]
        assert set(h.timings_ms) == {"encode", "project"}
        out = generate(tgt, [h.prompt], SamplingParams(max_new_tokens=3))[0]
        assert len(out.token_ids) >= 1
    native = prepare(src, tgt, TEXT, SUFFIX, "native", [])
    assert native.prompt.prefix_ids == tgt.tokenize(TEXT)[0]
    with pytest.raises(ValueError, match="is 10->128, but the models need 128->128"):
        prepare(src, tgt, TEXT, SUFFIX, "replace", [LayerMap(1, 1, build("affine").fit(x[:, :10], y))])
    with pytest.raises(ValueError, match="target layers 0..2"):
        prepare(src, tgt, TEXT, SUFFIX, "full", maps[1:])
    with pytest.raises(ValueError, match="non-empty text"):
        prepare(src, tgt, "", SUFFIX, "replace", maps[2:])


def test_matching_layer_by_relative_depth() -> None:
    assert [matching_layer(k, 18, 30) for k in (0, 4, 9, 18)] == [0, 7, 15, 30]
    assert matching_layer(30, 30, 18) == 18


def test_fingerprint_ignores_dtype_and_sees_weights(tiny_dirs, tiny: dict[str, LoadedModel]) -> None:  # type: ignore[no-untyped-def]
    m = tiny["llama"]
    as_bf16 = load_model(str(tiny_dirs["llama"]), dtype="bfloat16")
    assert as_bf16.fingerprint == m.fingerprint
    assert len({t.fingerprint for t in tiny.values()}) == len(tiny)  # every tiny model differs
    changed = load_model(str(tiny_dirs["llama"]))
    with torch.no_grad():
        changed.model.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    assert fingerprint(changed.model) != m.fingerprint


def test_grid_indices_follow_the_target_tokens() -> None:
    # "the lamp": source cuts "the| la|mp", target "the| lamp"; a special target token (0, 0) at the start.
    src = [(0, 3), (3, 6), (6, 8)]
    tgt = [(0, 0), (0, 3), (3, 8)]
    assert grid_indices(src, tgt) == [0, 0, 2]
    # The target cuts finer: each of its tokens takes the source token that has just read past it.
    assert grid_indices([(0, 3), (3, 8)], [(0, 2), (2, 3), (3, 5), (5, 8)]) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no tokens with text"):
        grid_indices([(0, 0)], [(0, 3)])


def selecting(d: int, n_layers: int, pick: int) -> LayerMap:
    """A map from ``n_layers`` concatenated source layers (0, 1, ..., of width d each) that returns layer ``pick``'s
    part unchanged and ignores the others: the oracle for which states a concatenated map reads, in which order."""
    weight = torch.zeros(d, d * n_layers)
    weight[:, pick * d : (pick + 1) * d] = torch.eye(d)
    aligner = build("linear")
    aligner.set_state({"weight": weight}, d * n_layers, d)
    return LayerMap.of(tuple(range(n_layers)), pick, aligner)


@pytest.mark.parametrize("pick", [0, 1, 2])
def test_a_map_from_concatenated_layers_reads_them_in_order(tiny: dict[str, LoadedModel], pick: int) -> None:
    # Source = target and maps from layers 0, 1, 2 concatenated that pass layer k's part through into layer k: the
    # handover at layer `pick` is the model reading the text itself, token for token (embeds at layer 0, full above
    # it, which hands over every layer up to its injection layer).
    m = tiny["llama"]
    native = generate(m, [prepare(m, m, TEXT, SUFFIX, "native", []).prompt], SamplingParams(max_new_tokens=8))[0]
    maps = [selecting(m.hidden_size, 3, k) for k in range(pick + 1)]
    assert maps[-1].source_layers == (0, 1, 2) and maps[-1].label == f"L0+1+2->L{pick}"
    handed = prepare(m, m, TEXT, SUFFIX, "embeds" if pick == 0 else "full", maps)
    assert generate(m, [handed.prompt], SamplingParams(max_new_tokens=8))[0].token_ids == native.token_ids
    if pick:  # a map that reads the wrong layer's part does not
        swapped = [*maps[:-1], selecting(m.hidden_size, 3, pick - 1)]
        swapped[-1].target_layer = pick
        wrong = prepare(m, m, TEXT, SUFFIX, "full", swapped)
        assert generate(m, [wrong.prompt], SamplingParams(max_new_tokens=8))[0].token_ids != native.token_ids
    layer_map = maps[-1]
    with pytest.raises(ValueError, match=r"map L0\+2->L1 is 384->128, but the models need 256->128"):
        prepare(m, m, TEXT, SUFFIX, "replace", [LayerMap(2, 1, layer_map.aligner, (0,))])


def test_target_grid_hands_over_one_state_per_target_token(tiny: dict[str, LoadedModel]) -> None:
    src, tgt = tiny["llama"], tiny["gemma3"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, src.hidden_size, generator=g)
    y = torch.randn(64, tgt.hidden_size, generator=g)
    maps = [LayerMap(1, 0, build("affine").fit(x, y))]
    on_source = prepare(src, tgt, TEXT, SUFFIX, "embeds", maps)
    on_target = prepare(src, tgt, TEXT, SUFFIX, "embeds", maps, grid="target")
    rows = grid_indices(on_source.source_offsets, tgt.tokenize(TEXT)[1])
    assert on_target.prompt.states is not None and on_source.prompt.states is not None
    assert on_target.prompt.states.shape[0] == len(tgt.tokenize(TEXT)[0]) != on_source.prompt.states.shape[0]
    torch.testing.assert_close(on_target.prompt.states, on_source.prompt.states[rows])
    # A model handing over to itself: both grids are the same tokens, so the same prompt.
    same = [LayerMap(1, 1, build("affine").fit(x, x))]
    a = prepare(src, src, TEXT, SUFFIX, "replace", same).prompt
    b = prepare(src, src, TEXT, SUFFIX, "replace", same, grid="target").prompt
    assert a.states is not None and b.states is not None
    torch.testing.assert_close(a.states, b.states)

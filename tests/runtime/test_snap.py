"""The pull of mapped states toward the target's vocabulary (``service.runtime.snap``): planted rows must be found
again, and a noisy identity map snapped all the way must hand a model exactly what it reads natively."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from aligners import build
from service.api.schemas import TranslateRequest
from service.api.translation import source_side, target_side
from service.runtime.encode import encode
from service.runtime.generate import SamplingParams, generate
from service.runtime.handover import LayerMap, prepare
from service.runtime.loading import LoadedModel
from service.runtime.modes import get_mode
from service.runtime.snap import nearest_rows, toward_vocabulary

TEXT = "the old mill of Varn was built in 1874 by Quill Halvard"
SUFFIX = " question: who built the mill? answer:"


def table(m: LoadedModel) -> torch.Tensor:
    """Every embedding row as the model reads it (its own embedding module, scale included)."""
    return m.stack.embed(torch.arange(m.stack.embed_tokens.weight.shape[0])[None])[0].float()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # Gemma 3 scales its table rows by sqrt(d)
def test_snapping_finds_planted_rows_and_moves_the_given_share_of_the_way(
    tiny: dict[str, LoadedModel], arch: str
) -> None:
    m = tiny[arch]
    rows = table(m)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(rows), (40,), generator=g)
    noise = torch.randn(40, rows.shape[1], generator=g)
    # Noise well inside half the distance to the next row: the planted row stays the nearest.
    gap = torch.cdist(rows[ids], rows).topk(2, largest=False).values[:, 1].min()
    states = rows[ids] + noise / noise.norm(dim=1, keepdim=True) * 0.2 * gap
    assert torch.equal(nearest_rows(m, states).cpu(), ids)
    assert torch.equal(toward_vocabulary(m, states, 0.0), states)
    torch.testing.assert_close(toward_vocabulary(m, states, 1.0), rows[ids])
    torch.testing.assert_close(toward_vocabulary(m, states, 0.25), states + 0.25 * (rows[ids] - states))
    far = torch.randn(16, rows.shape[1], generator=g) * rows.norm(dim=1).mean()  # nowhere near any row
    assert torch.equal(nearest_rows(m, far).cpu(), torch.cdist(far, rows).argmin(1))
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1.5"):
        toward_vocabulary(m, states, 1.5)


def test_a_snap_among_given_rows_finds_the_nearest_of_them_and_passes_scaled_gradients(
    tiny: dict[str, LoadedModel],
) -> None:
    m = tiny["gemma3"]
    rows = table(m)
    g = torch.Generator().manual_seed(2)
    ids = torch.randperm(len(rows) - 3, generator=g)[:12] + 3
    states = rows[ids] + 0.01 * torch.randn(12, rows.shape[1], generator=g)
    others = torch.tensor([i for i in range(3, len(rows)) if i not in set(ids.tolist())][:20])
    with_planted = torch.cat([others, ids])
    assert torch.equal(nearest_rows(m, states, with_planted).cpu(), ids)  # the planted rows are among the candidates
    # Without them: the nearest of the candidates, by an independent distance computation.
    assert torch.equal(nearest_rows(m, states, others).cpu(), others[torch.cdist(states, rows[others]).argmin(1)])
    x = states.clone().requires_grad_(True)
    toward_vocabulary(m, x, 0.25, others).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.75))  # the rows are constants: 1 - weight passes


def test_a_noisy_identity_map_snapped_all_the_way_reproduces_native_generation(tiny: dict[str, LoadedModel]) -> None:
    m = tiny["gemma3"]
    d = m.hidden_size
    g = torch.Generator().manual_seed(1)
    aligner = build("linear")
    aligner.set_state({"weight": torch.eye(d) + 0.02 * torch.randn(d, d, generator=g)}, d, d)
    params = SamplingParams(max_new_tokens=8)
    native = generate(m, [prepare(m, m, TEXT, SUFFIX, "native", []).prompt], params)[0]
    noisy = LayerMap(0, 0, aligner)
    assert noisy.snap == 0.0  # a map fitted without a snap weight keeps its states
    as_mapped = prepare(m, m, TEXT, SUFFIX, "embeds", [noisy]).prompt
    assert as_mapped.states is not None and not torch.equal(as_mapped.states, table(m)[m.tokenize(TEXT)[0]])
    aligner.fit_info["snap"] = 1.0  # as `fit` records the chosen weight
    snapped = prepare(m, m, TEXT, SUFFIX, "embeds", [LayerMap(0, 0, aligner)]).prompt
    assert snapped.states is not None
    assert torch.equal(snapped.states.float(), table(m)[m.tokenize(TEXT)[0]])
    assert generate(m, [snapped], params)[0].token_ids == native.token_ids
    # The snap belongs to maps into the input embeddings (and deeper maps that carry a readout, which this one does
    # not); an override (as `eval --snap`) replaces the map's own.
    assert LayerMap(0, 2, aligner).snap == 0.0 and LayerMap(0, 0, aligner, snap_weight=0.5).snap == 0.5


def test_a_carried_snap_moves_deeper_states_by_the_correction_their_readout_needs(
    tiny: dict[str, LoadedModel],
) -> None:
    m = tiny["gemma3"]
    rows = table(m)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, len(rows), (20,), generator=g)
    tokens = rows[ids] + 0.01 * torch.randn(20, rows.shape[1], generator=g)  # near the planted rows
    states = torch.randn(20, rows.shape[1], generator=g) * 5  # a deeper layer's states: anything
    torch.testing.assert_close(toward_vocabulary(m, states, 0.5, tokens=tokens), states + 0.5 * (rows[ids] - tokens))
    assert torch.equal(toward_vocabulary(m, states, 0.5, tokens=rows[ids]), states)  # nothing to correct
    with pytest.raises(ValueError, match="tokens must have the states' shape"):
        toward_vocabulary(m, states, 0.5, tokens=tokens[:3])


@pytest.mark.parametrize("mode", ["replace", "full"])
def test_an_error_in_the_token_part_of_a_deeper_map_is_undone_by_its_carried_snap(
    tiny: dict[str, LoadedModel], mode: str
) -> None:
    """Planted: the target hands its own states to itself, source layers 0 (its input embeddings) and 2 concatenated
    into layer 2. The map is the identity on layer 2 plus an error that depends only on the token embeddings,
    (A − I)·h0, and its readout is the same noisy map of the embeddings, A·h0, which still finds each token's row.
    Snapped all the way, the correction row − A·h0 = −(A − I)·h0 cancels the error: the target must then read its own
    layer-2 states and generate exactly as its identity control does."""
    m = tiny["gemma3"]
    d, layer = m.hidden_size, 2
    g = torch.Generator().manual_seed(5)
    noisy = torch.eye(d) + 0.02 * torch.randn(d, d, generator=g)  # A
    aligner = build("linear")
    aligner.set_state({"weight": torch.cat([noisy - torch.eye(d), torch.eye(d)], dim=1)}, 2 * d, d)
    aligner.set_readout(torch.cat([noisy, torch.zeros(d, d)], dim=1), torch.zeros(d))
    below = []
    if mode == "full":  # the blocks below are fed the target's own states: identity maps from the same layer
        for k in range(layer):
            ident = build("linear")
            ident.set_state({"weight": torch.eye(d)}, d, d)
            below.append(LayerMap(k, k, ident))
    deep = LayerMap(layer, layer, aligner, (0,))
    assert deep.snap == 0.0  # no weight chosen yet: the states as mapped
    unsnapped = prepare(m, m, TEXT, SUFFIX, mode, [*below, deep]).prompt
    aligner.fit_info["snap"] = 1.0  # as `fit` records the chosen weight
    snapped = prepare(m, m, TEXT, SUFFIX, mode, [*below, LayerMap(layer, layer, aligner, (0,))]).prompt
    identity = get_mode(mode).identity(m, TEXT, m.tokenize(SUFFIX)[0], layer)
    assert unsnapped.states is not None and snapped.states is not None and identity.states is not None
    error = (unsnapped.states.float() - identity.states.float()).abs().max()
    assert error > 1e-2  # the planted error is there before the snap
    torch.testing.assert_close(snapped.states.float(), identity.states.float(), rtol=1e-4, atol=1e-4 * float(error))
    params = SamplingParams(max_new_tokens=8)
    assert generate(m, [snapped], params)[0].token_ids == generate(m, [identity], params)[0].token_ids


def test_translate_returns_a_deeper_maps_states_with_their_carried_snap(tiny: dict[str, LoadedModel]) -> None:
    """/translate's two halves (the source side projects, the target side applies the snap): the states it returns
    for a map into layer 2 with a readout are the map's own plus weight × (nearest row − readout)."""
    m = tiny["gemma3"]
    d, layer = m.hidden_size, 2
    g = torch.Generator().manual_seed(6)
    aligner = build("linear")
    aligner.set_state({"weight": torch.randn(d, d, generator=g) / d**0.5}, d, d)
    readout = torch.eye(d) + 0.02 * torch.randn(d, d, generator=g)  # a noisy map of the embeddings
    aligner.set_readout(readout, torch.zeros(d))
    aligner.fit_info["snap"] = 0.5

    def encoder(texts: list[str], at: list[int]) -> list[Any]:
        return encode(m, texts, at)

    src = source_side(m, encoder, TEXT, LayerMap(0, layer, aligner))
    out = target_side(m, TranslateRequest(source="a", target="b", text=TEXT), layer, src)
    h0 = encode(m, [TEXT], [0])[0].at(0).float()
    tokens = h0 @ readout.T
    ids = torch.tensor(m.tokenize(TEXT)[0])
    assert torch.equal(nearest_rows(m, tokens).cpu(), ids)  # the noisy readout still finds each token's own row
    expected = aligner.transform(h0) + 0.5 * (table(m)[ids] - tokens)
    torch.testing.assert_close(out.mapped, expected, rtol=1e-4, atol=1e-4)
    assert src.snap == 0.5

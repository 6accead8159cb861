"""LoRA adapter: equals its base before training, beats it on a planted low-rank residual, is seeded."""

import pytest
import torch

from aligners import LoRA, build


def planted_lowrank(n: int, d: int, rank: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    u = torch.randn(d, rank, generator=g, dtype=torch.float64)
    v = torch.randn(rank, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    # An orthogonal map plus a rank-`rank` residual: Procrustes alone cannot represent it.
    y = x @ (q + 0.3 * u @ v / d**0.5).T + 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x.float(), y.float()


@pytest.mark.parametrize("base", ["procrustes", "affine"])
def test_untrained_adapter_equals_its_base(base: str) -> None:
    x, y = planted_lowrank(300, 16, 2)
    lora = LoRA(base=base, max_epochs=0).fit(x, y)
    plain = build(base).fit(x, y)
    assert lora.tensors is not None
    assert torch.count_nonzero(lora.tensors["lora_b"]) == 0
    torch.testing.assert_close(lora.transform(x), plain.transform(x), atol=0, rtol=0)


def test_beats_procrustes_base_on_planted_low_rank_residual() -> None:
    x, y = planted_lowrank(3000, 32, 2)
    x_test, y_test = planted_lowrank(500, 32, 2, seed=0)
    lora = LoRA(base="procrustes", rank=8, seed=0).fit(x, y)
    base = build("procrustes").fit(x, y)
    err_lora = float((lora.transform(x_test) - y_test).square().mean())
    err_base = float((base.transform(x_test) - y_test).square().mean())
    assert err_lora < 0.5 * err_base, (err_lora, err_base)
    assert lora.fit_info["val_mse"] < lora.fit_info["base_val_mse"]
    assert lora.fit_info["best_epoch"] >= 1


def test_same_seed_same_adapter_and_different_seed_differs() -> None:
    x, y = planted_lowrank(600, 16, 2, seed=1)
    a = LoRA(base="procrustes", max_epochs=3, seed=7).fit(x, y)
    b = LoRA(base="procrustes", max_epochs=3, seed=7).fit(x, y)
    c = LoRA(base="procrustes", max_epochs=3, seed=8).fit(x, y)
    assert a.tensors is not None and b.tensors is not None and c.tensors is not None
    torch.testing.assert_close(a.tensors["lora_a"], b.tensors["lora_a"], atol=0, rtol=0)
    torch.testing.assert_close(a.tensors["lora_b"], b.tensors["lora_b"], atol=0, rtol=0)
    assert not torch.equal(a.tensors["lora_a"], c.tensors["lora_a"])


def test_transform_matches_the_adapter_formula() -> None:
    x, y = planted_lowrank(500, 12, 2, seed=2)
    m = LoRA(base="affine", max_epochs=5).fit(x, y)
    t = m.tensors
    assert t is not None
    x_new = torch.randn(9, 12, dtype=torch.float64)
    base = m.base_map.transform(x_new)
    xs = (x_new - t["x_mean"]) / t["x_scale"]
    expected = base + m.scaling * (xs @ t["lora_a"].double().T) @ t["lora_b"].double().T
    torch.testing.assert_close(m.transform(x_new), expected, atol=1e-9, rtol=1e-9)


def test_bad_hyper_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="base must be one of"):
        LoRA(base="lora")
    with pytest.raises(ValueError, match="rank"):
        LoRA(rank=0)
    with pytest.raises(TypeError):
        LoRA(base_params={"nope": 1})

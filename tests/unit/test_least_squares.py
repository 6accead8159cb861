"""Linear and affine ridge maps: planted maps are recovered, λ selection works, n < d is stable."""

import pytest
import torch

from aligners import Affine, Linear, build
from aligners.functional import RidgeProblem, gram_and_cross


def planted(n: int, d_src: int, d_tgt: int, noise: float, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_tgt, d_src, generator=g, dtype=torch.float64)
    b = torch.randn(d_tgt, generator=g, dtype=torch.float64) * 10 if bias else torch.zeros(d_tgt, dtype=torch.float64)
    x = torch.randn(n, d_src, generator=g, dtype=torch.float64) + 3.0
    y = x @ w.T + b + noise * torch.randn(n, d_tgt, generator=g, dtype=torch.float64)
    return x, y, w, b


@pytest.mark.parametrize("d_src,d_tgt", [(16, 16), (12, 30), (30, 12)])
def test_linear_recovers_planted_map(d_src: int, d_tgt: int) -> None:
    x, y, w, _ = planted(1000, d_src, d_tgt, noise=0.01, bias=False)
    m = Linear().fit(x, y)
    assert m.tensors is not None
    torch.testing.assert_close(m.tensors["weight"], w, atol=5e-3, rtol=0)


def test_affine_recovers_planted_map_and_bias() -> None:
    x, y, w, b = planted(1000, 20, 24, noise=0.01, bias=True)
    m = Affine().fit(x, y)
    assert m.tensors is not None
    torch.testing.assert_close(m.tensors["weight"], w, atol=5e-3, rtol=0)
    torch.testing.assert_close(m.tensors["bias"], b, atol=5e-2, rtol=0)
    # Linear cannot absorb the offset: it must fit worse on the same data.
    lin = Linear().fit(x, y)
    assert float((lin.transform(x) - y).square().mean()) > 10 * float((m.transform(x) - y).square().mean())


def test_fixed_lambda_matches_closed_form() -> None:
    x, y, _, _ = planted(200, 10, 6, noise=0.5, bias=False)
    lam = 3.0
    m = Linear(lam=lam).fit(x, y)
    expected = torch.linalg.solve(x.T @ x + lam * torch.eye(10, dtype=torch.float64), x.T @ y).T
    assert m.tensors is not None
    torch.testing.assert_close(m.tensors["weight"], expected, atol=1e-9, rtol=1e-9)
    assert m.fit_info["lam"] == lam


def test_validation_errors_match_direct_computation() -> None:
    x, y, _, _ = planted(300, 8, 5, noise=1.0, bias=False, seed=3)
    xf, yf, xv, yv = x[:250], y[:250], x[250:], y[250:]
    g, c = gram_and_cross(xf, yf)
    gv, cv = gram_and_cross(xv, yv)
    problem = RidgeProblem(g, c)
    lams = [0.0, 0.1, 10.0, 1000.0]
    fast = problem.validation_errors(lams, gv, cv, float(yv.square().sum()))
    direct = [float((xv @ problem.weight(lam).T - yv).square().sum()) for lam in lams]
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(direct), rtol=1e-9, atol=1e-9)


def test_chosen_lambda_regularises_when_data_are_scarce() -> None:
    # Few noisy samples for many dims: held-out selection must pick λ > 0 and beat plain least squares out of sample.
    x, y, w, _ = planted(60, 40, 8, noise=3.0, bias=False, seed=4)
    x_test, y_test, _, _ = planted(2000, 40, 8, noise=3.0, bias=False, seed=4)
    y_test = x_test @ w.T
    auto = Linear().fit(x, y)
    plain = Linear(lam=0.0).fit(x, y)
    assert auto.fit_info["lam"] > 0
    err_auto = float((auto.transform(x_test) - y_test).square().mean())
    err_plain = float((plain.transform(x_test) - y_test).square().mean())
    assert err_auto < err_plain


@pytest.mark.parametrize("kind", ["linear", "affine"])
def test_stable_when_fewer_samples_than_dims(kind: str) -> None:
    x, y, _, _ = planted(20, 64, 16, noise=0.0, bias=False, seed=5)
    m = build(kind, lam=0.0).fit(x, y)
    out = m.transform(x)
    assert torch.isfinite(out).all()
    # Minimum-norm interpolation: the training data are reproduced exactly.
    torch.testing.assert_close(out, y, atol=1e-6, rtol=1e-6)
    auto = build(kind).fit(x, y)
    assert torch.isfinite(auto.transform(x)).all()


def test_float32_inputs_give_float64_quality_solution() -> None:
    x, y, w, b = planted(5000, 32, 32, noise=0.0, bias=True, seed=6)
    x = x + 100.0  # a large common offset, as hidden states have: centring must happen before float32 products
    y = x @ w.T + b
    m = Affine(lam=0.0).fit(x.float(), y.float())
    assert m.tensors is not None
    torch.testing.assert_close(m.tensors["weight"], w, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "affine"])
def test_auto_lambda_final_fit_equals_closed_form_on_all_rows(kind: str) -> None:
    # The final fit merges the two splits' statistics; it must equal a direct solve at the chosen λ.
    x, y, _, _ = planted(300, 12, 7, noise=2.0, bias=True, seed=7)
    m = build(kind).fit(x, y)
    lam = m.fit_info["lam"]
    assert m.tensors is not None
    if kind == "affine":
        xc, yc = x - x.mean(dim=0), y - y.mean(dim=0)
    else:
        xc, yc = x, y
    expected = torch.linalg.solve(xc.T @ xc + lam * torch.eye(12, dtype=torch.float64), xc.T @ yc).T
    torch.testing.assert_close(m.tensors["weight"], expected, atol=1e-8, rtol=1e-8)
    if kind == "affine":
        torch.testing.assert_close(m.tensors["bias"], y.mean(dim=0) - expected @ x.mean(dim=0), atol=1e-8, rtol=1e-8)

"""Procrustes against scipy.linalg.orthogonal_procrustes (the independent reference) and a planted rotation."""

import numpy as np
import pytest
import scipy.linalg
import torch

from aligners import Procrustes, build
from aligners.functional import polar_factor


def normalised(m: torch.Tensor) -> torch.Tensor:
    c = m - m.mean(dim=0)
    return c / torch.linalg.norm(c)


def scipy_mapped(xn: torch.Tensor, yn: torch.Tensor) -> np.ndarray:
    """scipy needs equal shapes: pad the narrower side with zero columns (the same optimisation problem, see below)."""
    a, b = xn.numpy(), yn.numpy()
    d = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, d - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, d - b.shape[1])))
    r, _ = scipy.linalg.orthogonal_procrustes(a, b)
    return (a @ r)[:, : yn.shape[1]]


@pytest.mark.parametrize("n,d_src,d_tgt", [(200, 16, 16), (300, 24, 40), (300, 40, 24), (50, 64, 64)])
def test_agrees_with_scipy(n: int, d_src: int, d_tgt: int) -> None:
    g = torch.Generator().manual_seed(n + d_src + d_tgt)
    x = torch.randn(n, d_src, generator=g, dtype=torch.float64) * 3 + 5
    y = x[:, :1] * torch.randn(1, d_tgt, generator=g, dtype=torch.float64) + torch.randn(
        n, d_tgt, generator=g, dtype=torch.float64
    )
    m = Procrustes().fit(x, y)
    xn, yn = normalised(x), normalised(y)
    assert m.tensors is not None
    w = m.tensors["weight"]
    # The mapped normalised data is unique for generic inputs (the rotation itself is not when n < d).
    np.testing.assert_allclose((xn @ w.T).numpy(), scipy_mapped(xn, yn), atol=1e-6)
    if d_src == d_tgt and n > d_src:
        r, _ = scipy.linalg.orthogonal_procrustes(xn.numpy(), yn.numpy())
        np.testing.assert_allclose(w.T.numpy(), r, atol=1e-6)
    # transform = normalise x, rotate, undo the target's normalisation.
    x_new = torch.randn(7, d_src, generator=g, dtype=torch.float64)
    t = m.tensors
    expected = ((x_new - t["x_mean"]) / t["x_scale"]) @ w.T * t["y_scale"] + t["y_mean"]
    torch.testing.assert_close(m.transform(x_new), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("d_src,d_tgt", [(12, 12), (8, 20), (20, 8)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_weight_is_semi_orthogonal(d_src: int, d_tgt: int, dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(100, d_src, generator=g, dtype=dtype), torch.randn(100, d_tgt, generator=g, dtype=dtype)
    m = Procrustes().fit(x, y)
    assert m.tensors is not None
    w = m.tensors["weight"]
    small = min(d_src, d_tgt)
    gram = w.T @ w if d_tgt >= d_src else w @ w.T
    torch.testing.assert_close(gram, torch.eye(small, dtype=w.dtype), atol=tol, rtol=0)


def test_recovers_planted_rotation_with_noise() -> None:
    g = torch.Generator().manual_seed(2)
    d = 32
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = torch.randn(2000, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d, dtype=torch.float64)
    y = 2.5 * x @ q.T + 7.0 + 0.01 * torch.randn(2000, d, generator=g, dtype=torch.float64)
    m = Procrustes().fit(x, y)
    assert m.tensors is not None
    assert torch.linalg.norm(m.tensors["weight"] - q) / d**0.5 < 1e-3
    x_new = torch.randn(10, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(m.transform(x_new), 2.5 * x_new @ q.T + 7.0, atol=0.05, rtol=0.01)


def test_float32_polar_factor_is_orthonormal_to_float32_precision() -> None:
    g = torch.Generator().manual_seed(3)
    for shape in [(30, 30), (40, 25), (25, 40)]:
        m = torch.randn(*shape, generator=g, dtype=torch.float64)
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        torch.testing.assert_close(polar_factor(m), u @ vh, atol=1e-12, rtol=0)
        torch.testing.assert_close(polar_factor(m, torch.float32), u @ vh, atol=1e-5, rtol=0)


def test_rank_deficient_cross_covariance_still_gives_orthonormal_map() -> None:
    # n < d: the centred cross-covariance has rank n - 1; the rotation is completed orthonormally all the same.
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, 32, generator=g, dtype=torch.float64), torch.randn(10, 32, generator=g, dtype=torch.float64)
    m = build("procrustes").fit(x, y)
    assert m.tensors is not None
    w = m.tensors["weight"]
    torch.testing.assert_close(w.T @ w, torch.eye(32, dtype=torch.float64), atol=1e-8, rtol=0)
    np.testing.assert_allclose((normalised(x) @ w.T).numpy(), scipy_mapped(normalised(x), normalised(y)), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_fit_and_transform_in_their_dtype(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    x64 = torch.randn(400, 16, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    y64 = x64 @ q.T
    m = Procrustes().fit(x64.to(dtype), y64.to(dtype))
    out = m.transform(x64.to(dtype))
    assert out.dtype == dtype
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(out.to(torch.float64), y64, atol=tol * 4, rtol=tol)

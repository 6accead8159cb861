"""Pure math behind the alignment maps: validation, centring, scaling and the closed-form solvers.

Everything here is a function of tensors; the estimator classes only store what these return. Shapes follow the
estimator convention: X is (n, d_src), Y is (n, d_tgt), a map W is (d_tgt, d_src) so that Y ≈ X Wᵀ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

# Rows per chunk when accumulating Gram and cross-covariance matrices: bounds the float64 copies of the inputs.
CHUNK_ROWS = 16_384


def check_matrix(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a finite, 2-D, floating-point tensor with at least one row; raise otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s)")
    return x


def check_pair(x: object, y: object, min_rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a fit pair: both matrices valid, same number of rows, at least ``min_rows`` of them."""
    x = check_matrix(x, "X")
    y = check_matrix(y, "Y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of rows (paired samples), got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} paired rows to fit, got {x.shape[0]}")
    return x, y


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to compute a map's output in: half precisions are promoted to float32, others kept."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def row_chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def column_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows, accumulated in float64. (d,)"""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for rows in row_chunks(x.shape[0]):
        total += x[rows].to(torch.float64).sum(dim=0)
    return total / x.shape[0]


def centred_frobenius(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ``x - mean``, accumulated in float64 without materialising the centred copy. ()"""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for rows in row_chunks(x.shape[0]):
        total += (x[rows].to(torch.float64) - mean).square().sum()
    return total.sqrt()


def _matmul_chunks(
    x: torch.Tensor, y: torch.Tensor, x_mean: torch.Tensor | None, y_mean: torch.Tensor | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield row chunks of (optionally centred) x and y, ready to multiply.

    Float64 inputs stay float64. Float32 (and half) inputs are centred in float64, then handed out as float32: the
    centring removes the large common offset of hidden states (the part that would lose digits), and float32 GEMM is
    about twice as fast as float64 on CPUs. Callers sum the chunk products in float64.
    """
    mm_dtype = torch.float64 if x.dtype == torch.float64 and y.dtype == torch.float64 else torch.float32
    for rows in row_chunks(x.shape[0]):
        xs = x[rows].to(torch.float64)
        ys = y[rows].to(torch.float64)
        if x_mean is not None:
            xs = xs - x_mean
        if y_mean is not None:
            ys = ys - y_mean
        yield xs.to(mm_dtype), ys.to(mm_dtype)


def cross_covariance(
    x: torch.Tensor, y: torch.Tensor, x_mean: torch.Tensor | None = None, y_mean: torch.Tensor | None = None
) -> torch.Tensor:
    """Ycᵀ Xc in float64, (d_tgt, d_src)."""
    c = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for xs, ys in _matmul_chunks(x, y, x_mean, y_mean):
        c += (ys.T @ xs).to(torch.float64)
    return c


def gram_and_cross(
    x: torch.Tensor, y: torch.Tensor, x_mean: torch.Tensor | None = None, y_mean: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Xcᵀ Xc, Ycᵀ Xc) in float64, shapes (d_src, d_src) and (d_tgt, d_src)."""
    g = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    c = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for xs, ys in _matmul_chunks(x, y, x_mean, y_mean):
        g += (xs.T @ xs).to(torch.float64)
        c += (ys.T @ xs).to(torch.float64)
    return g, c


def polar_factor(m: torch.Tensor, cond_limit: float = 1e8) -> torch.Tensor:
    """The orthogonal polar factor U Vᵀ of m = U Σ Vᵀ (thin SVD); (d_out, d_in) -> same shape, float64.

    When m is well conditioned (σ_max² / σ_min² below ``cond_limit``) the factor comes from the symmetric eigen-
    decomposition of the smaller Gram matrix, about twice as fast as an SVD; its error grows with that ratio times
    machine epsilon (≈1e-8 at the limit). Otherwise (rank-deficient or ill-conditioned m) it falls back to the SVD.
    The result has orthonormal rows or columns, whichever is fewer.
    """
    m = m.to(torch.float64)
    tall = m.shape[0] >= m.shape[1]
    gram = m.T @ m if tall else m @ m.T
    evals, evecs = torch.linalg.eigh(gram)
    top = float(evals[-1])
    if top > 0 and float(evals[0]) > top / cond_limit:
        inv_sqrt = (evecs * evals.rsqrt()) @ evecs.T
        return m @ inv_sqrt if tall else inv_sqrt @ m
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def procrustes_solve(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Centred, Frobenius-normalised orthogonal Procrustes.

    Xn = (X − μx)/sx, Yn = (Y − μy)/sy with s the Frobenius norm of the centred matrix; W = U Vᵀ from the SVD of
    Ynᵀ Xn, which minimises ‖Xn Wᵀ − Yn‖ over (semi-)orthogonal W. Positive scalings do not change the polar factor, so
    W is computed from the unscaled centred cross-covariance. Returns float64 tensors weight (d_tgt, d_src),
    x_mean (d_src,), y_mean (d_tgt,), x_scale (), y_scale ().
    """
    x_mean, y_mean = column_mean(x), column_mean(y)
    x_scale, y_scale = centred_frobenius(x, x_mean), centred_frobenius(y, y_mean)
    if float(x_scale) == 0.0 or float(y_scale) == 0.0:
        raise ValueError("X and Y must vary across rows: a centred matrix with zero norm cannot be normalised")
    return {
        "weight": polar_factor(cross_covariance(x, y, x_mean, y_mean)),
        "x_mean": x_mean,
        "y_mean": y_mean,
        "x_scale": x_scale,
        "y_scale": y_scale,
    }


class RidgeProblem:
    """Least squares W = argmin ‖X Wᵀ − Y‖² + λ‖W‖² from its sufficient statistics, for many λ at once.

    Built from G = XᵀX (d_src, d_src) and C = YᵀX (d_tgt, d_src); one eigendecomposition G = V diag(e) Vᵀ serves every
    λ: Wᵀ = V diag(1/(e+λ)) Vᵀ Cᵀ. Eigenvalues below a relative tolerance are treated as zero, so λ = 0 with n < d
    gives the minimum-norm least-squares solution instead of dividing by round-off.
    """

    def __init__(self, gram: torch.Tensor, cross: torch.Tensor) -> None:
        self.evals, self.evecs = torch.linalg.eigh(gram)
        tol = max(float(self.evals[-1]), 0.0) * gram.shape[0] * torch.finfo(torch.float64).eps
        self.keep = self.evals > tol
        self.proj = self.evecs.T @ cross.T  # (d_src, d_tgt): Vᵀ Cᵀ

    def inverse_diag(self, lam: float) -> torch.Tensor:
        inv = 1.0 / (self.evals + lam)
        return torch.where(self.keep, inv, torch.zeros_like(inv))

    def weight(self, lam: float) -> torch.Tensor:
        """(d_tgt, d_src)"""
        return (self.evecs @ (self.inverse_diag(lam)[:, None] * self.proj)).T

    def validation_errors(
        self, lams: Sequence[float], gram_val: torch.Tensor, cross_val: torch.Tensor, y_sq_val: float
    ) -> list[float]:
        """Held-out ‖Xv Wᵀ − Yv‖² for each λ, from the validation statistics, without forming any W.

        In the eigenbasis, with D = diag(1/(e+λ)), P = Vᵀ Cᵀ, Ĝ = Vᵀ Gv V and Ĉ = Vᵀ Cvᵀ:
        error = tr(Pᵀ D Ĝ D P) − 2 tr(Pᵀ D Ĉ) + ‖Yv‖² = dᵀ (Ĝ ∘ P Pᵀ) d − 2 dᵀ rowsum(P ∘ Ĉ) + ‖Yv‖², O(d²) per λ.
        """
        g_hat = self.evecs.T @ gram_val @ self.evecs
        quad = g_hat * (self.proj @ self.proj.T)
        lin = (self.proj * (self.evecs.T @ cross_val.T)).sum(dim=1)
        errors = []
        for lam in lams:
            dvec = self.inverse_diag(lam)
            errors.append(float(dvec @ quad @ dvec - 2.0 * dvec @ lin + y_sq_val))
        return errors


def ridge_grid(gram: torch.Tensor) -> list[float]:
    """Candidate ridge strengths, relative to the mean eigenvalue of the per-sample Gram matrix (0 included)."""
    scale = float(torch.trace(gram)) / gram.shape[0]
    return [0.0] + [scale * 10.0**k for k in range(-7, 2)]


def ridge_solve(
    x: torch.Tensor,
    y: torch.Tensor,
    centre: bool,
    lam: float | None,
    val_fraction: float,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Ridge least squares in float64, with the ridge strength chosen on a held-out split when ``lam`` is None.

    ``centre=True`` fits an affine map (the intercept is not penalised: both sides are centred with the fit data's
    means and the bias is μy − W μx). Returns tensors {weight (d_tgt, d_src), bias (d_tgt,) if centred} and fit
    information {lam, val_mse when chosen}.
    """
    n = x.shape[0]
    info: dict[str, float] = {}
    if lam is None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
        n_val = max(1, round(n * val_fraction))
        val_idx, fit_idx = perm[:n_val], perm[n_val:]
        xf, yf, xv, yv = x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]
        xm = column_mean(xf) if centre else None
        ym = column_mean(yf) if centre else None
        g_fit, c_fit = gram_and_cross(xf, yf, xm, ym)
        g_val, c_val = gram_and_cross(xv, yv, xm, ym)
        yv64 = yv.to(torch.float64) - (ym if ym is not None else 0.0)
        problem = RidgeProblem(g_fit, c_fit)
        lams = ridge_grid(g_fit)
        errors = problem.validation_errors(lams, g_val, c_val, float(yv64.square().sum()))
        best = min(range(len(lams)), key=lambda i: errors[i])
        lam = lams[best]
        # Scale λ with the sample count: the penalty is per ‖W‖² while the loss sums over samples.
        lam = lam * n / xf.shape[0]
        info["val_mse"] = errors[best] / (n_val * y.shape[1])
    x_mean = column_mean(x) if centre else None
    y_mean = column_mean(y) if centre else None
    gram, cross = gram_and_cross(x, y, x_mean, y_mean)
    weight = RidgeProblem(gram, cross).weight(lam)
    info["lam"] = float(lam)
    tensors = {"weight": weight}
    if x_mean is not None and y_mean is not None:
        tensors["bias"] = y_mean - weight @ x_mean
    return tensors, info

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


def _mm_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Products run in float64 for float64 inputs and in float32 otherwise (half inputs are promoted)."""
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def column_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows, accumulated in float64. (d,)"""
    # Chunk sums in the product dtype (torch sums pairwise: float32 chunk sums are accurate to ~1e-7 relative and
    # six times faster than upcasting every element), accumulated across chunks in float64.
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    dtype = _mm_dtype(x)
    for rows in row_chunks(x.shape[0]):
        total += x[rows].to(dtype).sum(dim=0).to(torch.float64)
    return total / x.shape[0]


def _centred_chunks(x: torch.Tensor, mean: torch.Tensor | None) -> Iterator[torch.Tensor]:
    """Row chunks of ``x − mean`` in the product dtype.

    Centring float32 data in float32 loses nothing float32 storage had not already lost: x and the mean are close,
    so the subtraction is (nearly) exact, and what remains is the spread about the mean. Centring before the products
    is what matters: products of uncentred hidden states (a large common offset) would drown the spread in round-off.
    """
    dtype = _mm_dtype(x)
    m = None if mean is None else mean.to(dtype)
    for rows in row_chunks(x.shape[0]):
        chunk = x[rows].to(dtype)
        yield chunk if m is None else chunk - m


def centred_frobenius(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ``x − mean``, summed in float64. ()"""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for chunk in _centred_chunks(x, mean):
        total += chunk.square().sum(dtype=torch.float64)
    return total.sqrt()


def _matmul_chunks(
    x: torch.Tensor, y: torch.Tensor, x_mean: torch.Tensor | None, y_mean: torch.Tensor | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield matching row chunks of (optionally centred) x and y in one product dtype; callers sum in float64."""
    dtype = _mm_dtype(x, y)
    for xs, ys in zip(_centred_chunks(x, x_mean), _centred_chunks(y, y_mean), strict=True):
        yield xs.to(dtype), ys.to(dtype)


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


def polar_factor(m: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthogonal polar factor U Vᵀ of m = U Σ Vᵀ (thin SVD), computed in ``dtype``; returned as float64.

    The result has orthonormal rows or columns, whichever are fewer. The SVD runs in the data's precision: float64
    for float64 data, float32 for float32 data (as scipy does), where it is about twice as fast on CPUs.
    """
    u, _, vh = torch.linalg.svd(m.to(dtype), full_matrices=False)
    return (u @ vh).to(torch.float64)


def procrustes_solve(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Centred, Frobenius-normalised orthogonal Procrustes.

    Xn = (X − μx)/sx, Yn = (Y − μy)/sy with s the Frobenius norm of the centred matrix; W = U Vᵀ from the SVD of
    Ynᵀ Xn, which minimises ‖Xn Wᵀ − Yn‖ over (semi-)orthogonal W. Positive scalings do not change the polar factor, so
    W comes from the unscaled centred cross-covariance, and both norms are summed in the same pass over the data.
    Returns float64 tensors weight (d_tgt, d_src), x_mean (d_src,), y_mean (d_tgt,), x_scale (), y_scale ().
    """
    x_mean, y_mean = column_mean(x), column_mean(y)
    cross = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    x_sq = torch.zeros((), dtype=torch.float64, device=x.device)
    y_sq = torch.zeros((), dtype=torch.float64, device=x.device)
    for xs, ys in _matmul_chunks(x, y, x_mean, y_mean):
        cross += (ys.T @ xs).to(torch.float64)
        x_sq += xs.square().sum(dtype=torch.float64)
        y_sq += ys.square().sum(dtype=torch.float64)
    if float(x_sq) == 0.0 or float(y_sq) == 0.0:
        raise ValueError("X and Y must vary across rows: a centred matrix with zero norm cannot be normalised")
    return {
        "weight": polar_factor(cross, _mm_dtype(x, y)),
        "x_mean": x_mean,
        "y_mean": y_mean,
        "x_scale": x_sq.sqrt(),
        "y_scale": y_sq.sqrt(),
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


def ridge_weight(gram: torch.Tensor, cross: torch.Tensor, lam: float) -> torch.Tensor:
    """W (d_tgt, d_src) solving (G + λI) Wᵀ = Cᵀ: a Cholesky solve for λ > 0 (one d³/3 factorisation), the
    eigendecomposition's minimum-norm solution for λ = 0 or a Gram matrix too ill-conditioned to factor."""
    if lam > 0:
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        factor, info = torch.linalg.cholesky_ex(gram + lam * eye)
        if int(info) == 0:
            return torch.cholesky_solve(cross.T, factor).T
    return RidgeProblem(gram, cross).weight(lam)


def ridge_solve(
    x: torch.Tensor,
    y: torch.Tensor,
    centre: bool,
    lam: float | None,
    val_fraction: float,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Ridge least squares in float64, with the ridge strength chosen on a held-out split when ``lam`` is None.

    ``centre=True`` fits an affine map (the intercept is not penalised: both sides are centred with the data's means
    and the bias is μy − W μx). After choosing λ, the final fit on all rows reuses the two splits' statistics (a Gram
    matrix is a sum over rows; re-centring about the overall mean is a rank-one correction), so the data are read
    once. Returns tensors {weight (d_tgt, d_src), bias (d_tgt,) if centred} and fit information {lam, val_mse}.
    """
    n = x.shape[0]
    info: dict[str, float] = {}
    x_mean = column_mean(x) if centre else None
    y_mean = column_mean(y) if centre else None
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
        lams = ridge_grid(g_fit)
        errors = RidgeProblem(g_fit, c_fit).validation_errors(lams, g_val, c_val, float(yv64.square().sum()))
        best = min(range(len(lams)), key=lambda i: errors[i])
        # Scale λ with the sample count: the penalty is per ‖W‖² while the loss sums over samples.
        lam = lams[best] * n / xf.shape[0]
        info["val_mse"] = errors[best] / (n_val * y.shape[1])
        gram, cross = g_fit + g_val, c_fit + c_val  # both about the fit split's means
        if x_mean is not None and y_mean is not None and xm is not None and ym is not None:
            dx, dy = x_mean - xm, y_mean - ym
            gram -= n * torch.outer(dx, dx)
            cross -= n * torch.outer(dy, dx)
    else:
        gram, cross = gram_and_cross(x, y, x_mean, y_mean)
    weight = ridge_weight(gram, cross, lam)
    info["lam"] = float(lam)
    tensors = {"weight": weight}
    if x_mean is not None and y_mean is not None:
        tensors["bias"] = y_mean - weight @ x_mean
    return tensors, info

"""Truncated SVD of a weight matrix, plain or whitened (SVD-LLM), as factors ``W ~= A @ B``.

Shapes: ``W`` is ``(out, in)`` as in ``nn.Linear``; ``A`` is ``(out, r)`` and ``B`` is ``(r, in)``, so a
layer computes ``y = (x @ B.T) @ A.T``. Singular values are split evenly (``sqrt(S)`` into each factor),
which keeps both factors on a similar scale and so friendly to per-channel int8.

Plain SVD minimises ``||W - A B||_F``. Whitened SVD (Wang et al. 2024, *SVD-LLM*) minimises the
output error on calibration inputs ``||(W - A B) X^T||_F``: with the input covariance
``C = X^T X = L L^T`` (Cholesky, ``L`` lower-triangular), ``||(W - W') X^T||_F = ||(W - W') L||_F``, so
truncating the SVD of ``W L`` and mapping back with ``L^{-1}`` is optimal, and the discarded squared
singular values of ``W L`` are exactly the calibration output error. All math runs in float64.
"""
from __future__ import annotations

import torch


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors of ``w`` in Frobenius norm: ``(A (out, r), B (r, in))`` in float64."""
    _check_rank(w, rank)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def whitened_svd_factors(w: torch.Tensor, chol: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors minimising ``||(W - A B) L||_F`` for the lower Cholesky factor ``chol`` (in, in)."""
    _check_rank(w, rank)
    chol = chol.double()
    u, s, vh = torch.linalg.svd(w.double() @ chol, full_matrices=False)
    root = s[:rank].sqrt()
    # B = sqrt(S) V^T L^{-1}: solve B L = sqrt(S) V^T rather than forming L^{-1}.
    b = torch.linalg.solve_triangular(chol, (root[:, None] * vh[:rank]), upper=False, left=False)
    return u[:, :rank] * root, b


def decompose(w: torch.Tensor, chol: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full thin SVD ``(U, S, Vh)`` (float64) of ``W`` or, with ``chol``, of the whitened ``W L``."""
    m = w.double() if chol is None else w.double() @ chol.double()
    return torch.linalg.svd(m, full_matrices=False)


def factors_from_svd(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int,
                     chol: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors from a precomputed ``decompose`` (same result as ``svd_factors`` /
    ``whitened_svd_factors``); lets a caller score every matrix's spectrum before choosing ranks."""
    if not 1 <= rank <= s.numel():
        raise ValueError(f"rank {rank} is outside [1, {s.numel()}]")
    root = s[:rank].double().sqrt()
    b = root[:, None] * vh[:rank].double()
    if chol is not None:
        b = torch.linalg.solve_triangular(chol.double(), b, upper=False, left=False)
    return u[:, :rank].double() * root, b


def singular_values(w: torch.Tensor, chol: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values (descending, float64) of ``W`` or, with ``chol``, of the whitened ``W L``."""
    m = w.double() if chol is None else w.double() @ chol.double()
    return torch.linalg.svdvals(m)


def cholesky_of_covariance(cov: torch.Tensor, damping: float = 1e-2) -> torch.Tensor:
    """Lower Cholesky factor of ``cov + damping * mean(diag) * I`` (float64).

    Damping relative to the mean diagonal keeps the factor invertible when some input channels are
    (nearly) never active in the calibration data; if the factorisation still fails the damping grows.
    """
    cov = cov.double()
    eye = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
    scale = cov.diagonal().mean().clamp_min(1e-12)
    base = max(damping, 1e-6)
    for lam in (damping, base * 10, base * 100, base * 1000):
        chol, info = torch.linalg.cholesky_ex(cov + lam * scale * eye)
        if int(info) == 0:
            return chol
    raise ValueError(f"covariance is not positive definite even with damping {base * 1000:g}")


def params_at_rank(out_features: int, in_features: int, rank: int) -> int:
    """Parameters of rank-``rank`` factors of an ``(out, in)`` matrix."""
    return rank * (out_features + in_features)


def break_even_rank(out_features: int, in_features: int) -> int:
    """Largest rank whose factors hold no more parameters than the dense matrix."""
    return out_features * in_features // (out_features + in_features)


def _check_rank(w: torch.Tensor, rank: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    if not 1 <= rank <= min(w.shape):
        raise ValueError(f"rank {rank} is outside [1, {min(w.shape)}] for a weight of shape {tuple(w.shape)}")

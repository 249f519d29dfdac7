"""Low-rank factorisations against numpy float64 references, budgets, int8 factors, and end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from leanlm.compress.lowrank.budget import DENSE, Allocation, MatrixBudget, allocate_ranks, kept_params, total_kept
from leanlm.compress.lowrank.intq import dequantize_rows, fake_quant_rows, quantize_rows
from leanlm.compress.lowrank.modules import LowRankLinear, TrainableLowRankLinear
from leanlm.compress.lowrank.svd import (cholesky_of_covariance, singular_values, svd_factors,
                                         whitened_svd_factors)
from leanlm.compress.lowrank.tt import full_tt_ranks, tt_params, tt_reconstruct, tt_svd


def _rng(seed=0):
    return np.random.default_rng(seed)


def _activations(rng, n, d):
    """Correlated inputs with a few outlier channels, like LLM activations."""
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
    x[:, :3] *= 20
    return x


# ------------------------------------------------------------------------------------ plain / whitened SVD
@pytest.mark.parametrize("shape,rank", [((40, 24), 7), ((24, 40), 1), ((33, 33), 20)])
def test_svd_error_matches_numpy(shape, rank):
    w = _rng().standard_normal(shape)
    a, b = svd_factors(torch.from_numpy(w), rank)
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    ref = (u[:, :rank] * s[:rank]) @ vh[:rank]
    err = np.linalg.norm(w - (a @ b).numpy())
    assert err == pytest.approx(np.linalg.norm(w - ref), rel=1e-10)
    assert err == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), rel=1e-10)  # Eckart-Young


@pytest.mark.parametrize("shape,rank", [((40, 24), 7), ((24, 40), 3)])
def test_whitened_svd_error_matches_numpy(shape, rank):
    rng = _rng(1)
    w, x = rng.standard_normal(shape), _activations(rng, 300, shape[1])
    cov = x.T @ x
    chol = np.linalg.cholesky(cov)
    a, b = whitened_svd_factors(torch.from_numpy(w), torch.from_numpy(chol), rank)
    # numpy reference: truncate the SVD of W L, map back through L^{-1}
    u, s, vh = np.linalg.svd(w @ chol, full_matrices=False)
    ref = (u[:, :rank] * s[:rank]) @ vh[:rank] @ np.linalg.inv(chol)
    out_err = np.linalg.norm((w - (a @ b).numpy()) @ x.T)
    assert out_err == pytest.approx(np.linalg.norm((w - ref) @ x.T), rel=1e-8)
    assert out_err == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), rel=1e-8)
    # and it beats plain SVD on the quantity it optimises
    pa, pb = svd_factors(torch.from_numpy(w), rank)
    assert out_err < np.linalg.norm((w - (pa @ pb).numpy()) @ x.T)
    sv = singular_values(torch.from_numpy(w), torch.from_numpy(chol)).numpy()
    np.testing.assert_allclose(sv, s, rtol=1e-10)


def test_full_rank_reproduces_layer():
    rng = _rng(2)
    w = rng.standard_normal((24, 16))
    x = torch.from_numpy(_activations(rng, 100, 16))
    chol = cholesky_of_covariance(x.T @ x)
    for a, b in (svd_factors(torch.from_numpy(w), 16), whitened_svd_factors(torch.from_numpy(w), chol, 16)):
        np.testing.assert_allclose((a @ b).numpy(), w, atol=1e-10)
    lin = torch.nn.Linear(16, 24, bias=True)
    a, b = svd_factors(lin.weight.detach(), 16)
    layer = TrainableLowRankLinear(a, b, lin.bias.detach(), fake_quant=False)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)


def test_cholesky_damping_handles_rank_deficient_covariance():
    x = torch.randn(5, 12, dtype=torch.float64)  # 5 samples, 12 channels: singular covariance
    chol = cholesky_of_covariance(x.T @ x, damping=1e-3)
    assert torch.isfinite(chol).all() and (chol.diagonal() > 0).all()


# ------------------------------------------------------------------------------------ tensor train
def _numpy_tt_svd(x, shape, ranks):
    """Reference TT-SVD of one vector (Oseledets 2011), float64."""
    cores, rest, r_prev = [], x.reshape(shape[0], -1), 1
    for dim, r in zip(shape[:-1], ranks):
        rest = rest.reshape(r_prev * dim, -1)
        u, s, vh = np.linalg.svd(rest, full_matrices=False)
        cores.append(u[:, :r].reshape(r_prev, dim, r))
        rest, r_prev = s[:r, None] * vh[:r], r
    cores.append(rest.reshape(r_prev, shape[-1], 1))
    out = cores[0].reshape(shape[0], -1)
    for c in cores[1:]:
        out = (out @ c.reshape(c.shape[0], -1)).reshape(-1, c.shape[2])
    return out.reshape(-1)


@pytest.mark.parametrize("shape,ranks", [((4, 4, 4), (2, 3)), ((3, 4, 5), (3, 4)), ((8, 9), (5,))])
def test_tt_error_matches_numpy(shape, ranks):
    x = _rng(3).standard_normal((6, int(np.prod(shape))))
    rebuilt = tt_reconstruct(tt_svd(torch.from_numpy(x), shape, ranks)).numpy()
    for row, got in zip(x, rebuilt):
        ref = _numpy_tt_svd(row, shape, ranks)
        assert np.linalg.norm(row - got) == pytest.approx(np.linalg.norm(row - ref), rel=1e-8, abs=1e-12)
    assert sum(c[0].numel() for c in tt_svd(torch.from_numpy(x), shape, ranks)) == tt_params(shape, ranks)


def test_tt_full_rank_is_exact():
    shape = (4, 3, 5)
    x = torch.randn(7, 60, dtype=torch.float64)
    rebuilt = tt_reconstruct(tt_svd(x, shape, full_tt_ranks(shape)))
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------ budgets
def _mats(rng, n=12):
    mats = []
    for i in range(n):
        o, k = int(rng.integers(8, 60)), int(rng.integers(8, 60))
        g = torch.from_numpy(np.sort(rng.exponential(size=min(o, k)))[::-1].copy())
        mats.append(MatrixBudget(f"m{i}", o, k, g))
    return mats


@pytest.mark.parametrize("allocation", list(Allocation))
@pytest.mark.parametrize("allow_dense", [True, False])
def test_budget_met_exactly(allocation, allow_dense):
    rng = _rng(4)
    for trial in range(20):
        mats = _mats(rng)
        dense = sum(m.dense_params for m in mats)
        budget = int(dense * rng.uniform(0.35, 0.95))
        ranks = allocate_ranks(mats, budget, allocation, allow_dense)
        kept = total_kept(mats, ranks)
        assert kept <= budget
        # exact: no matrix can take one more step (rank + 1, or dense) within the budget
        for m in mats:
            r = ranks[m.name]
            if r == DENSE or (r >= m.cap and not allow_dense):
                continue
            nxt = DENSE if r >= m.cap else r + 1
            assert kept - kept_params(m, r) + kept_params(m, nxt) > budget, (trial, m.name)


def test_global_allocation_prefers_larger_gains():
    big = MatrixBudget("big", 20, 20, torch.linspace(10, 5, 20, dtype=torch.float64))
    small = MatrixBudget("small", 20, 20, torch.linspace(1, 0.5, 20, dtype=torch.float64))
    ranks = allocate_ranks([big, small], 40 * 8, Allocation.GLOBAL)
    assert ranks == {"big": 7, "small": 1}


# ------------------------------------------------------------------------------------ int8 factors
def test_int8_rows_match_numpy_and_error_bound():
    x = _rng(5).standard_normal((9, 31)) * np.array([[10 ** (i % 4 - 2)] for i in range(9)])
    codes, scale = quantize_rows(torch.from_numpy(x))
    ref_scale = np.abs(x).max(axis=1) / 127
    np.testing.assert_array_equal(codes.numpy(), np.clip(np.round(x / ref_scale[:, None]), -127, 127).astype(np.int8))
    np.testing.assert_allclose(scale.numpy(), ref_scale, rtol=1e-6)
    err = np.abs(dequantize_rows(codes, scale, torch.float64).numpy() - x)
    assert (err <= ref_scale[:, None] * 0.5 + 1e-6 * np.abs(x).max(axis=1, keepdims=True)).all()


def test_int8_groups_match_numpy_and_reproduce_a_q8_0_table_exactly():
    x = _rng(6).standard_normal((4, 64)) * np.repeat(10.0 ** np.arange(-1, 1), 32)  # groups of different range
    codes, scale = quantize_rows(torch.from_numpy(x), group=32)
    assert scale.shape == (4, 2)
    ref_scale = np.abs(x.reshape(4, 2, 32)).max(axis=2) / 127
    np.testing.assert_allclose(scale.numpy(), ref_scale, rtol=1e-6)
    ref = np.clip(np.round(x.reshape(4, 2, 32) / ref_scale[..., None]), -127, 127).reshape(4, 64)
    np.testing.assert_array_equal(codes.numpy(), ref.astype(np.int8))
    # a table that *is* Q8_0 (int8 codes with an absmax code per group) comes back exactly
    q = torch.randint(-127, 128, (3, 64)).float()
    q[:, 0], q[:, 32] = 127, -127
    s = torch.tensor([[0.5, 0.25]] * 3)
    table = (q.reshape(3, 2, 32) * s[..., None]).reshape(3, 64)
    assert torch.equal(dequantize_rows(*quantize_rows(table, group=32)), table)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_rows(torch.zeros(2, 50), group=32)


def test_fake_quant_forward_matches_int8_and_gradient_is_identity():
    x = torch.randn(6, 10, requires_grad=True)
    y = fake_quant_rows(x)
    torch.testing.assert_close(y.detach(), dequantize_rows(*quantize_rows(x.detach())), rtol=1e-6, atol=1e-7)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_lowrank_linear_runs_factored_like_dense():
    a, b = torch.randn(20, 5), torch.randn(5, 12)
    layer = LowRankLinear.from_factors(a, b, torch.randn(20))
    x = torch.randn(3, 12)
    dense = x @ layer.dense_weight().T + layer.bias
    torch.testing.assert_close(layer(x), dense, rtol=1e-5, atol=1e-5)
    rel = (layer.dense_weight() - a @ b).norm() / (a @ b).norm()
    assert rel < 0.02  # int8 per-row factors


def test_factors_from_precomputed_svd_match_direct():
    from leanlm.compress.lowrank.svd import decompose, factors_from_svd

    rng = _rng(6)
    w, x = torch.from_numpy(rng.standard_normal((30, 20))), torch.from_numpy(_activations(rng, 80, 20))
    chol = cholesky_of_covariance(x.T @ x)
    for c, direct in ((None, svd_factors(w, 6)), (chol, whitened_svd_factors(w, chol, 6))):
        a, b = factors_from_svd(*decompose(w, c), 6, c)
        torch.testing.assert_close(a @ b, direct[0] @ direct[1], rtol=1e-10, atol=1e-10)

"""leanlm's quantiser into GGML block formats: importance-weighted scale search and GPTQ error feedback.

Plain functions over tensors, no model or file I/O. For one weight matrix ``W`` (rows, cols) and the
second moment of its inputs ``H = X^T X / n`` (cols, cols), in one block format (``kquants.FORMATS``):

1. ``search_subblocks``: per sub-block, a grid of candidate scales (and mins) is rounded and refit by
   weighted least squares, weights = ``diag(H)`` (the role of llama.cpp's importance matrix); the
   candidate with the least weighted error wins.
2. ``quantise_params``: the sub-block scales are themselves coded as the format stores them (fp16 for the
   32-blocks; fp16 super-scale times small integers for the K-quants), and the effective float scale and
   offset of each sub-block are computed exactly as ggml dequantises them.
3. ``gptq``: the columns are rounded in order, each column's error spread onto the columns not yet rounded
   through the Cholesky factor of ``H^-1`` (Frantar et al., GPTQ, 2022); each block's parameters are chosen
   from the already-updated weights when the block is reached, so the codes always lie on the format's grid.

The result is the integer fields ``kquants.pack`` writes, and the dequantised matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import gguf_kernels as kernels
from .kquants import BlockFormat

def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _round(x, s, o, fmt: BlockFormat):
    inv = torch.where(s != 0, 1.0 / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(s))
    return torch.clamp(torch.round((x - o) * inv), fmt.qmin, fmt.qmax)


def search_subblocks(x: torch.Tensor, w: torch.Tensor, fmt: BlockFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Float scale and offset per sub-block. ``x`` (rows, nsub, sub), ``w`` importances > 0, either
    (nsub, sub) shared by all rows or (rows, nsub, sub).

    Symmetric types: the value of largest magnitude is mapped onto either end of the code range, the
    divisor moved in steps of 0.2 codes; each candidate's codes get their least-squares scale. Asymmetric
    types: [min, max] spread over the range with the same steps, then a least-squares (scale, offset);
    K-quant offsets are kept <= 0 as their format stores ``-dmin * m``. Least weighted error wins.
    """
    xn = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    wn = np.broadcast_to(np.ascontiguousarray(w.numpy(), dtype=np.float32), xn.shape)
    S, O = kernels.search(xn, wn, float(fmt.qmin), float(fmt.qmax),
                          fmt.asym, fmt.asym and fmt.kquant, kernels.STEPS if fmt.qmax < 127 else kernels.STEPS[5:6])
    return torch.from_numpy(S), torch.from_numpy(O)


@dataclass
class BlockParams:
    """One column block's coded parameters for all rows: integer fields and effective float values."""
    fields: dict[str, torch.Tensor]   # d, (m | dmin, sc, mn) as the format stores them, per row
    scale: torch.Tensor               # (rows, nsub) effective scale, as ggml computes it
    offset: torch.Tensor              # (rows, nsub) effective offset


def _kscale(v: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Code per-row sub-scales ``v`` (rows, nsub) as fp16 ``d`` times integers in [lo, hi]."""
    if lo < 0:   # signed: the largest magnitude goes to the negative end, which is one step longer
        amax = v.gather(-1, v.abs().argmax(-1, keepdim=True)).squeeze(-1)
        d = _fp16(amax / lo)
    else:
        d = _fp16(v.amax(-1) / hi)
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    return d, torch.clamp(torch.round(v * inv.unsqueeze(-1)), lo, hi)


def quantise_params(scale: torch.Tensor, offset: torch.Tensor, fmt: BlockFormat) -> BlockParams:
    """Code float sub-block parameters the way ``fmt`` stores them. ``scale``/``offset`` (rows, nsub)."""
    if not fmt.kquant:
        d = _fp16(scale[:, 0])
        if fmt.asym:
            m = _fp16(offset[:, 0])
            return BlockParams({"d": d, "m": m}, d[:, None], m[:, None])
        return BlockParams({"d": d}, d[:, None], torch.zeros_like(d)[:, None])
    d, sc = _kscale(scale, fmt.sc_min, fmt.sc_max)
    eff_s = d[:, None] * sc
    if not fmt.asym:
        return BlockParams({"d": d, "sc": sc}, eff_s, torch.zeros_like(eff_s))
    dmin, mn = _kscale(-offset, 0, fmt.m_max)
    return BlockParams({"d": d, "sc": sc, "dmin": dmin, "mn": mn}, eff_s, -(dmin[:, None] * mn))


def block_params(x: torch.Tensor, imp: torch.Tensor, fmt: BlockFormat,
                 sigma2: torch.Tensor | None = None) -> BlockParams:
    """Search and code one column block. ``x`` (rows, block) weights, ``imp`` (block,) importances.

    With ``sigma2`` (rows,) the importance of each weight is ``imp * sqrt(sigma2 + x^2)``, llama.cpp's
    weighting in ``quantize_row_q4_0_impl`` (large weights count more), else ``imp`` alone.
    """
    nsub = fmt.block // fmt.sub
    w = imp.reshape(nsub, fmt.sub)
    if sigma2 is not None:
        w = (imp * torch.sqrt(sigma2[:, None] + x * x)).reshape(x.shape[0], nsub, fmt.sub)
    s, o = search_subblocks(x.reshape(x.shape[0], nsub, fmt.sub), w, fmt)
    return quantise_params(s, o, fmt)


def importance(h_diag: torch.Tensor | None, cols: int) -> torch.Tensor:
    """Column weights for the scale search: diag(H), floored so no column counts for nothing."""
    if h_diag is None:
        return torch.ones(cols)
    h = h_diag.to(torch.float32).clamp_min(0)
    return h + 1e-3 * h.mean().clamp_min(1e-12)


def row_sigma2(W: torch.Tensor) -> torch.Tensor:
    """Mean square of each row (rows,): the ``sigma2`` of llama.cpp's importance weighting."""
    return (W.to(torch.float32) ** 2).mean(1)


def _hinv_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp*mean(diag) I)^-1 (float32 with dampening, as GPTQ does)."""
    H = H.to(torch.float32).clone()
    dead = torch.diag(H) <= 0
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


@dataclass
class Quantised:
    codes: torch.Tensor               # (rows, cols) integer codes as dequantised
    blocks: list[BlockParams]         # one per column block, in column order
    dequant: torch.Tensor             # (rows, cols) the matrix the file decodes to

    def fields(self, fmt: BlockFormat) -> dict[str, np.ndarray]:
        """Per packed block (rows * cols/block blocks, row-major): the integer fields for ``kquants.pack``."""
        rows = self.codes.shape[0]
        out = {"q": self.codes.reshape(rows, -1, fmt.block).reshape(-1, fmt.block).to(torch.int32).numpy()}
        for key in self.blocks[0].fields:
            stacked = torch.stack([b.fields[key] for b in self.blocks], dim=1)      # (rows, nblocks[, nsub])
            out[key] = stacked.reshape(rows * len(self.blocks), *stacked.shape[2:]).numpy()
            if key in ("sc", "mn"):
                out[key] = out[key].astype(np.int32)
        return out


def _dequant_block(q: torch.Tensor, p: BlockParams, fmt: BlockFormat) -> torch.Tensor:
    rows = q.shape[0]
    nsub = fmt.block // fmt.sub
    q = q.reshape(rows, nsub, fmt.sub)
    return (p.scale.unsqueeze(-1) * q + p.offset.unsqueeze(-1)).reshape(rows, fmt.block)


def rtn(W: torch.Tensor, fmt: BlockFormat, imp: torch.Tensor | None = None, row_chunk: int = 8192,
        llama_weighting: bool = False) -> Quantised:
    """Importance-weighted round-to-nearest (no error feedback), block by block, rows in chunks.
    ``llama_weighting``: each weight's importance times ``sqrt(sigma2 + w^2)`` (see ``block_params``)."""
    W = W.to(torch.float32)
    imp = importance(None, W.shape[1]) if imp is None else imp
    sig = row_sigma2(W) if llama_weighting else None
    nsub = fmt.block // fmt.sub
    blocks, codes, deq = [], torch.empty_like(W), torch.empty_like(W)
    for b in range(0, W.shape[1], fmt.block):
        parts = []
        for r in range(0, W.shape[0], row_chunk):
            x = W[r:r + row_chunk, b:b + fmt.block]
            p = block_params(x, imp[b:b + fmt.block], fmt, None if sig is None else sig[r:r + row_chunk])
            q = _round(x.reshape(-1, nsub, fmt.sub), p.scale.unsqueeze(-1), p.offset.unsqueeze(-1), fmt)
            codes[r:r + row_chunk, b:b + fmt.block] = q.reshape(x.shape)
            deq[r:r + row_chunk, b:b + fmt.block] = _dequant_block(q.reshape(x.shape), p, fmt)
            parts.append(p)
        blocks.append(BlockParams({k: torch.cat([p.fields[k] for p in parts]) for k in parts[0].fields},
                                  torch.cat([p.scale for p in parts]), torch.cat([p.offset for p in parts])))
    return Quantised(codes, blocks, deq)


def _concat(params: list[BlockParams]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p.scale for p in params], 1), torch.cat([p.offset for p in params], 1)


def gptq(W: torch.Tensor, H: torch.Tensor, fmt: BlockFormat, damp: float = 0.01,
         hinv: torch.Tensor | None = None, lazy: int = 256, params_when_reached: bool = True,
         llama_weighting: bool = False) -> Quantised:
    """GPTQ within ``fmt``'s grid. ``W`` (rows, cols), ``H`` (cols, cols) input second moment.

    Columns go in batches of ``lazy`` (a whole K-quant block; eight 32-blocks), the errors of a batch
    fed to all later columns at its end (GPTQ's lazy batch update). Inside a batch, each block's
    parameters are searched when the sweep reaches the block, on the weights as updated by every column
    before it (``params_when_reached``; GPTQ's grouped order), then its columns are rounded one by one,
    each error fed forward. ``params_when_reached=False`` searches all of a batch's blocks at its start
    (stale for all but the first: updated weights then clamp at the code range's ends).
    """
    W = W.to(torch.float32).clone()
    rows, cols = W.shape
    if cols % fmt.block:
        raise ValueError(f"{cols} columns are not a multiple of {fmt.qtype.name}'s block of {fmt.block}")
    imp = importance(torch.diag(H), cols)
    U = _hinv_factor(H, damp) if hinv is None else hinv
    W[:, torch.diag(H) <= 0] = 0.0
    sig = row_sigma2(W) if llama_weighting else None
    lazy = max(lazy - lazy % fmt.block, fmt.block)
    codes, deq = torch.empty_like(W), torch.empty_like(W)
    blocks: list[BlockParams] = []
    for b0 in range(0, cols, lazy):
        b1 = min(b0 + lazy, cols)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        E1 = torch.zeros_like(W1)
        step = fmt.block if params_when_reached else b1 - b0
        for i0 in range(0, b1 - b0, step):
            i1 = i0 + step
            params = [block_params(W1[:, i:i + fmt.block], imp[b0 + i:b0 + i + fmt.block], fmt, sig)
                      for i in range(i0, i1, fmt.block)]
            blocks += params
            S, O = _concat(params)                                 # (rows, subs in this step)
            S = S.repeat_interleave(fmt.sub, 1).contiguous()       # (rows, step columns)
            O = O.repeat_interleave(fmt.sub, 1).contiguous()
            Wn = np.ascontiguousarray(W1[:, i0:i1].numpy())
            En, Cn = np.zeros(Wn.shape, dtype=np.float32), np.zeros(Wn.shape, dtype=np.float32)
            kernels.gptq_batch(Wn, U1[i0:i1, i0:i1].contiguous().numpy(), S.numpy(), O.numpy(),
                               float(fmt.qmin), float(fmt.qmax), Cn, En)
            E = torch.from_numpy(En)
            E1[:, i0:i1] = E
            W1[:, i1:] -= E @ U1[i0:i1, i1:]
            codes[:, b0 + i0:b0 + i1] = torch.from_numpy(Cn)
            deq[:, b0 + i0:b0 + i1] = S * codes[:, b0 + i0:b0 + i1] + O
        W[:, b1:] -= E1 @ U[b0:b1, b1:]
    return Quantised(codes, blocks, deq)


def weighted_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor | None) -> float:
    """Output error proxy tr((W - Wq) H (W - Wq)^T) (plain squared error without ``H``)."""
    D = (W.to(torch.float32) - Wq.to(torch.float32))
    if H is None:
        return float((D * D).sum())
    return float(((D @ H.to(torch.float32)) * D).sum())

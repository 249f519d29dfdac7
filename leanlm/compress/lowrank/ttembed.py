"""Tensor-train compression of a model's token embedding with int8 cores (TensorGPT, Xu et al. 2023).

Every embedding row is TT-decomposed on its own (``tt.py``); all rows share one core shape and rank
tuple, chosen as the largest that fits the budget. Each core is stored as int8 codes with one scale per
(row, core). At load the rows are rebuilt once into the embedding table: a tied output head needs the
whole table for every logit, so TT saves bytes on disk, not bytes in memory.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .budget import target_params
from .config import TTConfig
from .intq import dequantize_rows, quantize_rows
from .targets import arch_of
from .tt import best_ranks, default_shape, tt_params, tt_reconstruct, tt_svd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TTEmbedding:
    name: str                        # module name of the embedding
    rows: int
    shape: tuple[int, ...]
    ranks: tuple[int, ...]
    codes: tuple[torch.Tensor, ...]  # per core (V, r_{i-1} * d_i * r_i) int8
    scales: tuple[torch.Tensor, ...]  # per core (V,) float32

    def core_shapes(self) -> list[tuple[int, int, int]]:
        r = (1, *self.ranks, 1)
        return [(r[i], d, r[i + 1]) for i, d in enumerate(self.shape)]

    def rebuild(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``(V, d)`` table from the int8 cores (contracted in float32)."""
        cores = [dequantize_rows(c, s).reshape(self.rows, *cs)
                 for c, s, cs in zip(self.codes, self.scales, self.core_shapes())]
        return tt_reconstruct(cores).to(dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (c, s) in enumerate(zip(self.codes, self.scales)):
            out[f"tt.core{i}.codes"], out[f"tt.core{i}.scale"] = c.contiguous(), s.contiguous()
        return out

    def meta(self) -> dict:
        return {"name": self.name, "rows": self.rows, "shape": list(self.shape), "ranks": list(self.ranks)}

    @classmethod
    def from_tensors(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> "TTEmbedding":
        k = len(meta["shape"])
        return cls(meta["name"], meta["rows"], tuple(meta["shape"]), tuple(meta["ranks"]),
                   tuple(tensors[f"tt.core{i}.codes"] for i in range(k)),
                   tuple(tensors[f"tt.core{i}.scale"] for i in range(k)))


@torch.no_grad()
def tt_compress_embedding(model: nn.Module, cfg: TTConfig) -> tuple[TTEmbedding, dict]:
    """TT-compress the input embedding in place (its table becomes the rebuilt one); returns it and a report."""
    name = arch_of(model).embedding
    emb: nn.Embedding = model.get_submodule(name)
    table = emb.weight.detach()
    rows, d = table.shape
    shape = tuple(cfg.shape) or default_shape(d, cfg.cores)
    budget = target_params(rows * d, cfg.remove)
    ranks = best_ranks(shape, budget // rows)
    codes, scales = [[] for _ in shape], [[] for _ in shape]
    for i in range(0, rows, cfg.batch_rows):
        for k, core in enumerate(tt_svd(table[i:i + cfg.batch_rows], shape, ranks)):
            c, s = quantize_rows(core.reshape(core.shape[0], -1))
            codes[k].append(c)
            scales[k].append(s)
    tt = TTEmbedding(name, rows, shape, ranks, tuple(torch.cat(c) for c in codes), tuple(torch.cat(s) for s in scales))
    rebuilt = tt.rebuild(torch.float32)
    err = float((rebuilt - table.float()).norm() / table.float().norm())
    emb.weight.copy_(rebuilt.to(table.dtype))
    kept = rows * tt_params(shape, ranks)
    report = {"embedding": name, "shape": list(shape), "ranks": list(ranks), "params_before": rows * d,
              "params_after": kept, "budget": budget, "removed_fraction_of_embedding": 1 - kept / (rows * d),
              "relative_error": err}
    log.info("TT embedding %s: shape %s ranks %s, kept %d of %d parameters, rel. error %.4f",
             name, shape, ranks, kept, rows * d, err)
    return tt, report

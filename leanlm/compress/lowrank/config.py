"""Typed configs of the low-rank methods (frozen, validated, JSON round-tripping)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ...config import require
from .budget import Allocation


class Method(str, enum.Enum):
    SVD = "svd"            # plain truncated SVD of each weight
    WHITENED = "whitened"  # SVD-LLM: truncated SVD of W L, L = chol(X^T X) of calibration inputs


class Execution(str, enum.Enum):
    FACTORED = "factored"  # run x @ B.T then @ A.T on the int8 codes (memory of the factors only)
    DENSE = "dense"        # rebuild W = A B once at load into a dense layer (memory of the dense weight)


@dataclass(frozen=True)
class LowRankConfig:
    method: Method = field(default=Method.WHITENED, metadata={"help": "svd (plain) or whitened (SVD-LLM)"})
    remove: float = field(default=0.2, metadata={"help": "fraction of the targeted linears' parameters removed"})
    allocation: Allocation = field(default=Allocation.UNIFORM, metadata={"help": "rank allocation strategy"})
    allow_dense: bool = field(default=True, metadata={"help": "let the budget keep some matrices dense"})
    include: tuple[str, ...] = field(default=(), metadata={"help": "only linears whose name contains one of these"})
    n_calib: int = field(default=64, metadata={"help": "calibration sequences (whitened)"})
    seq_len: int = field(default=256, metadata={"help": "calibration sequence length"})
    seed: int = 0
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward pass"})
    damping: float = field(default=1e-3, metadata={"help": "covariance damping, relative to its mean diagonal"})
    int8: bool = field(default=True, metadata={"help": "store factors as int8 with per-row scales"})

    def __post_init__(self) -> None:
        require(0.0 < self.remove < 1.0, f"remove must be in (0, 1), got {self.remove}")
        require(self.n_calib >= 1 and self.seq_len >= 2 and self.batch_size >= 1, "n_calib, seq_len, batch_size")
        require(self.damping >= 0, "damping must be >= 0")


@dataclass(frozen=True)
class TTConfig:
    remove: float = field(default=0.2, metadata={"help": "fraction of the embedding's parameters removed"})
    cores: int = field(default=3, metadata={"help": "TT cores per embedding row"})
    shape: tuple[int, ...] = field(default=(), metadata={"help": "row reshaping (default: near-equal factors)"})
    batch_rows: int = field(default=8192, metadata={"help": "rows per batched TT-SVD"})

    def __post_init__(self) -> None:
        require(0.0 < self.remove < 1.0, f"remove must be in (0, 1), got {self.remove}")
        require(self.cores >= 2, "need at least 2 TT cores")
        require(not self.shape or len(self.shape) >= 2, "a TT shape needs at least 2 factors")

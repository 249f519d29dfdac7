"""Figures commonly claimed for each technique, shown beside our measurements and always labelled as claims.

The claims come from a popular summary of LLM compression techniques; they are not measurements of ours
and no source pins down the model, metric or hardware behind them. ``memory_reduction`` is the fraction of
memory saved, ``accuracy`` the fraction of accuracy kept, ``speedup`` the inference speed factor.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    technique: str
    memory_reduction: float
    accuracy: float
    speedup: float


CLAIMS: dict[str, Claim] = {
    "int8": Claim("INT8", 0.50, 0.972, 1.8),
    "smoothquant+awq": Claim("SmoothQuant+AWQ", 0.50, 0.999, 1.7),
    "tensor-decomposition": Claim("tensor decomposition", 0.58, 1.000, 2.4),
    "combined": Claim("combined", 0.65, 0.995, 3.1),
}

# Which claim a bench row is compared with (rows without one show no claim).
ROW_CLAIMS: dict[str, str] = {
    "int8": "int8",
    "w8a8": "int8",
    "smoothquant": "smoothquant+awq",
    "awq-w4": "smoothquant+awq",
    "lowrank": "tensor-decomposition",
    "svd": "tensor-decomposition",
    "tt-embed": "tensor-decomposition",
    "combined": "combined",
}


def claim_for(row: str) -> Claim | None:
    key = ROW_CLAIMS.get(row)
    return CLAIMS[key] if key else None

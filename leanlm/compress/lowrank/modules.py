"""Linear layers that hold low-rank factors: int8 codes for inference, float factors for training.

``LowRankLinear`` (inference) keeps ``A`` and ``B`` as int8 codes with per-row float32 scales and
computes ``y = ((x @ Bq.T) * sb) @ Aq.T * sa (+ bias)``: the rank-``r`` intermediate is the only extra
activation and the dense weight is never materialised. ``TrainableLowRankLinear`` holds float factors as
parameters and, with ``fake_quant``, rounds them to the int8 grid in the forward pass with straight-
through gradients (quantisation-aware training); ``to_int8`` turns it into a ``LowRankLinear``.
"""
from __future__ import annotations

import torch
from torch import nn

from .intq import dequantize_rows, fake_quant_rows, quantize_rows


class LowRankLinear(nn.Module):
    """``y = x @ (A B).T + bias`` from int8 factors ``A (out, r)``, ``B (r, in)`` with per-row scales."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        kw = {"device": device}
        self.register_buffer("a_codes", torch.zeros(out_features, rank, dtype=torch.int8, **kw))
        self.register_buffer("a_scale", torch.ones(out_features, dtype=torch.float32, **kw))
        self.register_buffer("b_codes", torch.zeros(rank, in_features, dtype=torch.int8, **kw))
        self.register_buffer("b_scale", torch.ones(rank, dtype=torch.float32, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, **kw), requires_grad=False) if bias else None

    @classmethod
    def from_factors(cls, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
                     dtype: torch.dtype = torch.float32) -> "LowRankLinear":
        (out_f, rank), (rank_b, in_f) = a.shape, b.shape
        if rank != rank_b:
            raise ValueError(f"factor ranks differ: A {tuple(a.shape)}, B {tuple(b.shape)}")
        m = cls(in_f, out_f, rank, bias=bias is not None, dtype=dtype, device=a.device)
        m.a_codes, m.a_scale = quantize_rows(a)
        m.b_codes, m.b_scale = quantize_rows(b)
        if bias is not None:
            m.bias.data.copy_(bias.detach().to(dtype))
        return m

    def factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        return dequantize_rows(self.a_codes, self.a_scale, dtype), dequantize_rows(self.b_codes, self.b_scale, dtype)

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The rebuilt ``(out, in)`` weight ``A @ B`` (float32 product, then cast)."""
        a, b = self.factors(torch.float32)
        return (a @ b).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        h = (x @ self.b_codes.to(dt).T) * self.b_scale.to(dt)    # (..., r)
        y = (h @ self.a_codes.to(dt).T) * self.a_scale.to(dt)    # (..., out)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, int8"


class TrainableLowRankLinear(nn.Module):
    """Float factors as parameters; ``fake_quant`` simulates int8 storage in the forward pass (STE)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, fake_quant: bool = True):
        super().__init__()
        self.a = nn.Parameter(a.detach().float().clone())
        self.b = nn.Parameter(b.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.fake_quant = fake_quant
        self.in_features, self.out_features, self.rank = b.shape[1], a.shape[0], a.shape[1]

    @classmethod
    def from_int8(cls, m: LowRankLinear, fake_quant: bool = True) -> "TrainableLowRankLinear":
        a, b = m.factors(torch.float32)
        return cls(a, b, None if m.bias is None else m.bias, fake_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = (fake_quant_rows(self.a), fake_quant_rows(self.b)) if self.fake_quant else (self.a, self.b)
        y = (x @ b.to(x.dtype).T) @ a.to(x.dtype).T
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    def to_int8(self, dtype: torch.dtype) -> LowRankLinear:
        return LowRankLinear.from_factors(self.a.detach(), self.b.detach(), self.bias, dtype)

    def to_linear(self, dtype: torch.dtype) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``A @ B`` (for pipelines that quantise dense layers next)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.a.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_((self.a.detach() @ self.b.detach()).to(dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias.to(dtype))
        return lin

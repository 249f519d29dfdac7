"""``QuantConfig``: what to quantise and how, frozen and JSON-round-tripping (saved in every checkpoint)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ...config import require


class Method(str, enum.Enum):
    INT8 = "int8"                # weight-only int8 per channel, round to nearest
    GPTQ_INT8 = "gptq-int8"      # the same int8 per channel, codes by GPTQ on the calibration text
    W8A8 = "w8a8"                # int8 weights + dynamic per-token int8 activations, no smoothing
    SMOOTHQUANT = "smoothquant"  # SmoothQuant smoothing (alpha searched) then W8A8
    RTN_W4 = "rtn-w4"            # weight-only int4 group-wise asymmetric, round to nearest
    AWQ_W4 = "awq-w4"            # AWQ scale + clip search, then int4 as RTN_W4
    AWQ_INT8 = "awq-int8"        # AWQ's activation-aware scales (folded into the norms), then int8 as INT8
    INT8_BLOCK = "int8-block"    # weight-only int8, one scale per block of 32 along K (Q8_0's grid)


WEIGHT_BITS = {Method.INT8: 8, Method.GPTQ_INT8: 8, Method.AWQ_INT8: 8, Method.W8A8: 8, Method.SMOOTHQUANT: 8,
               Method.RTN_W4: 4, Method.AWQ_W4: 4, Method.INT8_BLOCK: 8}
CALIBRATED = (Method.SMOOTHQUANT, Method.AWQ_W4, Method.GPTQ_INT8, Method.AWQ_INT8)
MODULE_KIND = {Method.INT8: "int8", Method.GPTQ_INT8: "int8", Method.AWQ_INT8: "int8", Method.W8A8: "w8a8", Method.SMOOTHQUANT: "w8a8", Method.RTN_W4: "int4",
               Method.AWQ_W4: "int4", Method.INT8_BLOCK: "int8-block"}


@dataclass(frozen=True)
class QuantConfig:
    method: Method = field(default=Method.INT8, metadata={"help": "quantisation scheme"})
    group_size: int = field(default=128, metadata={"help": "int4 group length along the input dimension"})
    # calibration data (SmoothQuant, AWQ): windows from the corpus's calib half
    calib_n: int = field(default=16, metadata={"help": "calibration sequences"})
    calib_seq_len: int = field(default=512, metadata={"help": "tokens per calibration sequence"})
    calib_seed: int = field(default=0, metadata={"help": "seed of the calibration windows"})
    calib_corpus: str | None = field(default=None, metadata={"help": "calibration corpus name or text file "
                                                                      "(default: pydoc's calib half; 'mix')"})
    calib_batch: int = field(default=4, metadata={"help": "sequences per forward pass while calibrating"})
    # SmoothQuant: migration strength alpha, chosen per model from this grid by calibration loss
    alpha_grid: tuple[float, ...] = field(default=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
                                          metadata={"help": "SmoothQuant alphas tried"})
    alpha_eval_n: int = field(default=4,
                              metadata={"help": "held-back calibration sequences scoring each alpha"})
    smooth_linear_pairs: bool = field(default=True,
                                      metadata={"help": "also smooth linear->linear pairs (up->down, v->o)"})
    # AWQ: per-channel scale = mean|x|^a / normaliser, a in {0, 1/grid, ..., (grid-1)/grid}; then clipping
    awq_grid: int = field(default=20, metadata={"help": "AWQ scale-search grid points"})
    awq_tokens: int = field(default=512, metadata={"help": "calibration tokens used by the AWQ scale search"})
    awq_duo_scaling: bool = field(default=True,
                                  metadata={"help": "also try mean|x|^a / mean|w|^(1-a) scales"})
    awq_inspect: bool = field(default=True, metadata={"help": "score gate/up scales on the MLP output"})
    awq_clip: bool = field(default=True, metadata={"help": "AWQ weight-clipping search"})
    clip_grid: int = field(default=20, metadata={"help": "clip ratios 1 - i/grid tried"})
    clip_max_shrink: float = field(default=0.5, metadata={"help": "smallest clip ratio is 1 - this"})
    clip_tokens: int = field(default=256, metadata={"help": "calibration tokens used by the clip search"})
    seed: int = field(default=0, metadata={"help": "seed for token subsampling"})
    gptq_damp: float = field(default=0.01, metadata={"help": "GPTQ: dampening, as a share of mean diag(H)"})

    def __post_init__(self) -> None:
        require(isinstance(self.method, Method), f"method must be a Method, got {self.method!r}")
        require(self.group_size in (32, 64, 128, 256),
                f"group_size must be 32, 64, 128 or 256 (the int4 kernel's), got {self.group_size}")
        require(self.calib_n >= 1 and self.calib_seq_len >= 2 and self.calib_batch >= 1,
                "calib_n, calib_seq_len and calib_batch must be positive")
        require(len(self.alpha_grid) >= 1 and all(0.0 <= a <= 1.0 for a in self.alpha_grid),
                f"alpha_grid values must lie in [0, 1], got {self.alpha_grid}")
        require(self.alpha_eval_n >= 1, "alpha_eval_n must be >= 1")
        require(self.awq_grid >= 1 and self.clip_grid >= 1, "awq_grid and clip_grid must be >= 1")
        require(0.0 <= self.clip_max_shrink < 1.0, "clip_max_shrink must be in [0, 1)")
        require(self.awq_tokens >= 16 and self.clip_tokens >= 16, "awq_tokens and clip_tokens must be >= 16")
        require(0 < self.gptq_damp < 1, "gptq_damp must be in (0, 1)")

    @property
    def bits(self) -> int:
        return WEIGHT_BITS[self.method]

    @property
    def module_kind(self) -> str:
        return MODULE_KIND[self.method]

    @property
    def calibrated(self) -> bool:
        return self.method in CALIBRATED

"""Which GGML type each tensor gets for a ``--type`` (llama-quantize's mixes and fallbacks, as data).

llama.cpp's ``llama-quant.cpp`` picks a per-tensor type from the file type (``Q4_K_M`` ...), the tensor's
role and layer, and then falls back to a 32-block type when a row is not a multiple of the type's block
(K-quants need rows of 256). leanlm writes the same mix so its files compare like for like with
llama-quantize's; ``plan_types`` returns each tensor's type and the reason, so fallbacks are reported.
Only the file types leanlm writes are covered (the legacy types, F16/BF16/F32 and Q2_K..Q6_K mixes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, LlamaFileType as F

# --type name -> (llama file type, the type most tensors get)
FILE_TYPES: dict[str, tuple[F, str]] = {
    "F32": (F.ALL_F32, "F32"), "F16": (F.MOSTLY_F16, "F16"), "BF16": (F.MOSTLY_BF16, "BF16"),
    "Q8_0": (F.MOSTLY_Q8_0, "Q8_0"), "Q4_0": (F.MOSTLY_Q4_0, "Q4_0"), "Q4_1": (F.MOSTLY_Q4_1, "Q4_1"),
    "Q5_0": (F.MOSTLY_Q5_0, "Q5_0"), "Q5_1": (F.MOSTLY_Q5_1, "Q5_1"),
    "Q2_K": (F.MOSTLY_Q2_K, "Q2_K"), "Q3_K_S": (F.MOSTLY_Q3_K_S, "Q3_K"), "Q3_K_M": (F.MOSTLY_Q3_K_M, "Q3_K"),
    "Q3_K_L": (F.MOSTLY_Q3_K_L, "Q3_K"), "Q4_K_S": (F.MOSTLY_Q4_K_S, "Q4_K"), "Q4_K_M": (F.MOSTLY_Q4_K_M, "Q4_K"),
    "Q5_K_S": (F.MOSTLY_Q5_K_S, "Q5_K"), "Q5_K_M": (F.MOSTLY_Q5_K_M, "Q5_K"), "Q6_K": (F.MOSTLY_Q6_K, "Q6_K"),
}
FLOAT_TYPES = ("F32", "F16", "BF16")
# A row that is not a multiple of a K-quant's 256 falls back to this 32-block type (tensor_type_fallback).
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_CATEGORY = [("output", re.compile(r"^output\.weight$")), ("token_embd", re.compile(r"^token_embd\.weight$")),
             ("attn_v", re.compile(r"attn_v\.weight$")), ("attn_k", re.compile(r"attn_k\.weight$")),
             ("attn_q", re.compile(r"attn_q\.weight$")), ("attn_output", re.compile(r"attn_output\.weight$")),
             ("ffn_up", re.compile(r"ffn_up\.weight$")), ("ffn_gate", re.compile(r"ffn_gate\.weight$")),
             ("ffn_down", re.compile(r"ffn_down\.weight$"))]
CATEGORIES = tuple(c for c, _ in _CATEGORY)


def block_size(qtype: str) -> int:
    return GGML_QUANT_SIZES[T[qtype]][0]


def bits_per_weight(qtype: str) -> float:
    blk, size = GGML_QUANT_SIZES[T[qtype]]
    return 8.0 * size / blk


def category(name: str) -> str:
    return next((c for c, rx in _CATEGORY if rx.search(name)), "other")


def quantisable(name: str, shape: tuple[int, ...]) -> bool:
    """llama-quantize's rule: 2-D tensors named *weight, not norms (1-D tensors stay F32)."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_head: int
    n_head_kv: int
    tied: bool          # no output.weight: token_embd is the output matrix too

    @property
    def n_gqa(self) -> int:
        return self.n_head // max(self.n_head_kv, 1)


def _mix(ftype: str, default: str, cat: str, i: int, n: int, m: ModelShape, imatrix: bool) -> str:
    """The type llama_tensor_get_type_impl picks before the shape fallback (non-IQ file types only)."""
    if cat == "output" or (m.tied and cat == "token_embd"):
        return default if default == "Q8_0" else "Q6_K"
    if cat == "attn_v":
        if ftype == "Q2_K":
            return "Q4_K" if m.n_gqa >= 4 else "Q3_K"
        if ftype == "Q3_K_M":
            return "Q5_K" if i < 2 else "Q4_K"
        if ftype == "Q3_K_L":
            return "Q5_K"
        if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
            return "Q6_K"
        if ftype == "Q4_K_S" and i < 4:
            return "Q5_K"
    elif cat == "ffn_down":
        if ftype == "Q2_K":
            return "Q3_K"
        if ftype == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K"
        if ftype == "Q3_K_L":
            return "Q5_K"
        if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
            return "Q6_K"
        if ftype == "Q4_K_S" and i < n // 8:
            return "Q5_K"
        if ftype in ("Q4_0", "Q5_0") and imatrix and i < n // 8:
            return "Q4_1" if ftype == "Q4_0" else "Q5_1"
    elif cat == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, default)
    return default


def fallback(qtype: str, ncols: int) -> str:
    if ncols % block_size(qtype) == 0:
        return qtype
    alt = FALLBACK.get(qtype, qtype)
    return alt if ncols % block_size(alt) == 0 else "F16"


_LAYER = re.compile(r"^blk\.(\d+)\.")


def llama_order(name: str) -> tuple[int, str]:
    """llama.cpp's tensor order (``weight_name_comparer``): by layer number, then by name; tensors outside
    the blocks first. llama-quantize counts ``attn_v`` / ``ffn_down`` layers in this order, so the mix
    must too: a GGUF's own file order may be lexicographic (blk.0, blk.1, blk.10, ...)."""
    m = _LAYER.match(name)
    return (int(m.group(1)) if m else -1, name)


def plan_types(ftype: str, tensors: list[tuple[str, tuple[int, ...]]], m: ModelShape,
               imatrix: bool = True) -> dict[str, dict]:
    """``{name: {"type", "wanted", "reason"}}`` for every tensor, in the order given (file order).

    ``tensors`` are (GGUF name, numpy shape (rows, cols)); ``imatrix`` says whether the quantiser is
    calibrated (llama-quantize changes its Q4_0/Q5_0 mix when given an importance matrix). The per-layer
    rules count layers in llama.cpp's order (``llama_order``), whatever the order given.
    """
    if ftype not in FILE_TYPES:
        raise ValueError(f"unsupported GGUF type '{ftype}'; choose one of {sorted(FILE_TYPES)}")
    default = FILE_TYPES[ftype][1]
    plan, counters = {}, {"attn_v": 0, "ffn_down": 0}
    n_wv = sum(category(name) == "attn_v" for name, _ in tensors)
    for name, shape in sorted(tensors, key=lambda t: llama_order(t[0])):
        if not quantisable(name, shape):
            plan[name] = {"type": "F32", "wanted": "F32", "reason": "1-D or norm: kept F32"}
            continue
        if default in FLOAT_TYPES:
            plan[name] = {"type": default, "wanted": default, "reason": "float file type"}
            continue
        cat = category(name)
        i = counters.get(cat, 0)
        n = n_wv if cat == "attn_v" else m.n_layer
        wanted = _mix(ftype, default, cat, i, n, m, imatrix)
        if cat in counters:
            counters[cat] += 1
        got = fallback(wanted, shape[-1])
        reason = "mix" if wanted != default else "default"
        if got != wanted:
            reason = f"{wanted} needs rows of {block_size(wanted)}, row is {shape[-1]}: fell back to {got}"
        plan[name] = {"type": got, "wanted": wanted, "reason": reason}
    return {name: plan[name] for name, _ in tensors}


def tensor_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    if qtype == "F32":
        return 4 * n
    if qtype in ("F16", "BF16"):
        return 2 * n
    blk, size = GGML_QUANT_SIZES[T[qtype]]
    return n // blk * size

"""GGUF export: block packers bit-exact against gguf-py's dequantisers, llama-quantize's type plan, the
quantiser's error against round-to-nearest, and written files read back by gguf-py and transformers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from leanlm.export import gguf_quant as gq  # noqa: E402
from leanlm.export.gguf_types import ModelShape, plan_types  # noqa: E402
from leanlm.export.kquants import FORMATS, pack  # noqa: E402

RNG = np.random.default_rng(0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _expected(name: str, f: dict) -> np.ndarray:
    """Dequantise integer fields with ggml's float32 expressions, independently of the quantiser."""
    fmt = FORMATS[name]
    q = f["q"].astype(np.float32)
    n = q.shape[0]
    f16 = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
    if not fmt.kquant:
        d = f16(f["d"])[:, None]
        return d * q + f16(f["m"])[:, None] if fmt.asym else d * q
    nsub = fmt.block // fmt.sub
    q = q.reshape(n, nsub, fmt.sub)
    dl = (f16(f["d"])[:, None] * f["sc"].astype(np.float32))[..., None]
    if not fmt.asym:
        return (dl * q).reshape(n, -1)
    ml = (f16(f["dmin"])[:, None] * f["mn"].astype(np.float32))[..., None]
    return (dl * q - ml).reshape(n, -1)


@pytest.mark.parametrize("name", list(FORMATS))
def test_packer_bit_exact_on_random_fields(name):
    fmt = FORMATS[name]
    n = 64
    f = {"q": RNG.integers(fmt.qmin, fmt.qmax + 1, size=(n, fmt.block)),
         "d": RNG.standard_normal(n).astype(np.float32) * 0.01}
    f["q"][0] = fmt.qmin
    f["q"][1] = fmt.qmax                     # both ends of the code range
    if fmt.asym and not fmt.kquant:
        f["m"] = RNG.standard_normal(n).astype(np.float32) * 0.01
    if fmt.kquant:
        nsub = fmt.block // fmt.sub
        f["sc"] = RNG.integers(fmt.sc_min, fmt.sc_max + 1, size=(n, nsub))
        f["sc"][2] = fmt.sc_min
        f["sc"][3] = fmt.sc_max
        if fmt.asym:
            f["d"] = np.abs(f["d"])
            f["dmin"] = np.abs(RNG.standard_normal(n).astype(np.float32)) * 0.01
            f["mn"] = RNG.integers(0, fmt.m_max + 1, size=(n, nsub))
            f["mn"][4] = fmt.m_max
    blocks = pack(name, f)
    assert blocks.shape == (n, fmt.type_size)
    got = gguf.quants.dequantize(blocks, fmt.qtype)
    want = _expected(name, f)
    assert np.array_equal(got, want), np.abs(got - want).max()


@pytest.mark.parametrize("name", list(FORMATS))
def test_quantiser_output_round_trips(name):
    """What the quantiser says the file decodes to is exactly what gguf-py decodes from the packed bytes."""
    fmt = FORMATS[name]
    W = torch.randn(16, 512) * 0.05
    W[0, :40] = 0.0
    W[1] = W[1].abs()
    X = torch.randn(2048, 512) * torch.linspace(0.2, 3.0, 512)
    H = X.T @ X / X.shape[0]
    for res in (gq.rtn(W, fmt), gq.gptq(W, H, fmt)):
        blocks = pack(name, res.fields(fmt)).reshape(16, -1)
        got = gguf.quants.dequantize(blocks, fmt.qtype)
        assert np.array_equal(got, res.dequant.numpy())


# SQNR floors (dB) for RTN on Gaussian weights, well below what each type reaches (~6 dB per bit)
SQNR_FLOOR = {"Q2_K": 8, "Q3_K": 14, "Q4_0": 19, "Q4_1": 20, "Q4_K": 20, "Q5_0": 25, "Q5_1": 26, "Q5_K": 26,
              "Q6_K": 31, "Q8_0": 40}


@pytest.mark.parametrize("name", list(FORMATS))
def test_gptq_beats_rtn_on_output_error(name):
    fmt = FORMATS[name]
    torch.manual_seed(0)
    W = torch.randn(64, 512) * 0.05
    X = torch.randn(4096, 512) @ (torch.eye(512) + 0.3 * torch.randn(512, 512) / 512 ** 0.5)
    X = X * torch.linspace(0.1, 3.0, 512)                     # uneven, correlated input channels
    H = X.T @ X / X.shape[0]
    r = gq.rtn(W, fmt, gq.importance(torch.diag(H), 512))
    g = gq.gptq(W, H, fmt)
    sqnr = 10 * np.log10(float((W ** 2).sum()) / gq.weighted_error(W, gq.rtn(W, fmt).dequant, None))
    assert sqnr > SQNR_FLOOR[name], sqnr
    e_r, e_g = gq.weighted_error(W, r.dequant, H), gq.weighted_error(W, g.dequant, H)
    assert e_g < (1.0 if name == "Q2_K" else 0.97) * e_r, (e_g, e_r)


SMOL = ModelShape(n_layer=30, n_head=9, n_head_kv=3, tied=True)


def _smol_tensors():
    out = [("token_embd.weight", (49152, 576))]
    for i in range(30):
        out += [(f"blk.{i}.attn_norm.weight", (576,)), (f"blk.{i}.attn_q.weight", (576, 576)),
                (f"blk.{i}.attn_k.weight", (192, 576)), (f"blk.{i}.attn_v.weight", (192, 576)),
                (f"blk.{i}.attn_output.weight", (576, 576)), (f"blk.{i}.ffn_gate.weight", (1536, 576)),
                (f"blk.{i}.ffn_up.weight", (1536, 576)), (f"blk.{i}.ffn_down.weight", (576, 1536))]
    return out


def test_plan_matches_llama_quantize_rules():
    plan = plan_types("Q4_K_M", _smol_tensors(), SMOL)
    assert plan["token_embd.weight"]["type"] == "Q8_0"            # tied output: Q6_K, 576 % 256 -> Q8_0
    assert plan["blk.0.attn_norm.weight"]["type"] == "F32"
    assert plan["blk.5.attn_q.weight"]["type"] == "Q5_0"          # Q4_K on a 576-wide row falls back
    assert "fell back" in plan["blk.5.attn_q.weight"]["reason"]
    assert plan["blk.0.attn_v.weight"]["type"] == "Q8_0"          # use_more_bits: Q6_K -> Q8_0
    assert plan["blk.4.attn_v.weight"]["type"] == "Q5_0"
    assert plan["blk.0.ffn_down.weight"]["type"] == "Q6_K"        # 1536 columns take K-quants
    assert plan["blk.4.ffn_down.weight"]["type"] == "Q4_K"
    assert plan["blk.5.ffn_down.weight"]["type"] == "Q6_K"        # (i - n/8) % 3 == 2
    assert plan["blk.6.ffn_down.weight"]["type"] == "Q4_K"
    q2 = plan_types("Q2_K", _smol_tensors(), SMOL)
    assert q2["blk.3.attn_v.weight"]["type"] == "Q4_0"            # Q3_K (gqa 3 < 4) -> Q4_0 fallback
    assert q2["blk.3.ffn_down.weight"]["type"] == "Q3_K"
    q40 = plan_types("Q4_0", _smol_tensors(), SMOL, imatrix=True)
    assert q40["blk.2.ffn_down.weight"]["type"] == "Q4_1"         # first n/8 ffn_down with an imatrix
    assert q40["blk.4.ffn_down.weight"]["type"] == "Q4_0"
    assert plan_types("Q4_0", _smol_tensors(), SMOL, imatrix=False)["blk.2.ffn_down.weight"]["type"] == "Q4_0"
    with pytest.raises(ValueError, match="unsupported GGUF type"):
        plan_types("Q7_K", _smol_tensors(), SMOL)


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M", "Q5_K_M", "Q3_K_M"])
def test_plan_counts_layers_in_llama_cpp_order_whatever_the_file_order(ftype):
    """A GGUF's own file order can be lexicographic (blk.0, blk.1, blk.10, ...: the packaged SmolLM2 and
    Gemma are); llama-quantize walks tensors by layer number, so the per-layer rules must too."""
    numeric = _smol_tensors()
    lexicographic = sorted(numeric, key=lambda t: t[0])
    assert [n for n, _ in lexicographic][1:4] != [n for n, _ in numeric][1:4]
    a, b = plan_types(ftype, numeric, SMOL), plan_types(ftype, lexicographic, SMOL)
    assert list(b) == [n for n, _ in lexicographic]                 # the plan keeps the order given
    assert {n: r["type"] for n, r in a.items()} == {n: r["type"] for n, r in b.items()}
    if ftype == "Q4_K_M":
        more = sorted(int(n.split(".")[1]) for n, r in b.items() if n.endswith("attn_v.weight") and r["type"] == "Q8_0")
        assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]   # use_more_bits(i, 30)


def test_rounding_method_is_one_decision_for_the_file_and_its_report():
    """GPTQ only where it runs: calibrated, not an --rtn-for category, not over the size limit."""
    from leanlm.export.gguf import GPTQ_MAX_ELEMENTS, GGUFExportConfig, rounding_method

    H = torch.eye(4)
    g = GGUFExportConfig(method="gptq", rtn_for=("attn_v",))
    assert rounding_method(g, "blk.0.ffn_down.weight", (576, 1536), H) == "gptq"
    assert rounding_method(g, "blk.0.attn_v.weight", (192, 576), H) == "rtn"
    assert rounding_method(g, "token_embd.weight", (GPTQ_MAX_ELEMENTS // 640 + 1, 640), H) == "rtn (too large for GPTQ)"
    assert rounding_method(g, "blk.0.ffn_down.weight", (576, 1536), None) == "rtn (no calibration)"
    assert rounding_method(GGUFExportConfig(), "blk.0.ffn_down.weight", (576, 1536), H) == GGUFExportConfig().method

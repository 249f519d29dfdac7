"""GPTQ int8 (``Method.GPTQ_INT8``): lower output error than round-to-nearest on the inputs it was
calibrated on and on other inputs of the same distribution, the same scales and module as ``int8``, and a
checkpoint that loads back to the same logits."""
from __future__ import annotations

import pytest
import torch

import leanlm
from leanlm.compress.calib import calibration_ids
from leanlm.compress.quant.api import QuantConfig, load_model, quantize_model, save_quantized
from leanlm.compress.quant.config import Method
from leanlm.compress.quant.gptq import gptq_int8
from leanlm.compress.quant.modules import Int8Linear
from leanlm.compress.quant.primitives import quantize_int8


def _inputs(n: int, k: int, seed: int) -> torch.Tensor:
    """Correlated inputs with a few loud channels, as a transformer's linears see them."""
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(99)) / k ** 0.5    # one distribution
    g = torch.Generator().manual_seed(seed)                                             # its samples
    loud = torch.ones(k)
    loud[:4] = 20.0
    return (torch.randn(n, k, generator=g) @ mix) * loud


def test_gptq_int8_beats_round_to_nearest_on_output_error():
    k, n = 256, 96
    W = torch.randn(n, k, generator=torch.Generator().manual_seed(3)) * 0.05
    X, X2 = _inputs(4096, k, 0), _inputs(4096, k, 1)           # calibration / unseen, same distribution
    q, s = gptq_int8(W, X.T @ X / len(X))
    qr, sr = quantize_int8(W)
    assert torch.equal(s, sr)                                   # the same scales: only the codes differ
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    for x in (X, X2):
        ref = x @ W.T
        e_gptq = float(((x @ (q.float() * s[:, None]).T) - ref).norm())
        e_rtn = float(((x @ (qr.float() * sr[:, None]).T) - ref).norm())
        assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_gptq_int8_model_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model, tok = leanlm.load("tiny-llama", dtype="bf16")
    ids = calibration_ids(tok, 4, 64, 0, corpus="pydoc")
    ev = calibration_ids(tok, 2, 64, 1, corpus="pydoc")
    with torch.no_grad():
        ref = model(ev).logits.float()
    rtn, _ = leanlm.load("tiny-llama", dtype="bf16")
    cfg = QuantConfig(method=Method.GPTQ_INT8, calib_n=4, calib_seq_len=64)
    with pytest.raises(ValueError, match="calibrates"):
        quantize_model(rtn, cfg, None)
    with torch.no_grad():
        quantize_model(model, cfg, ids)
        quantize_model(rtn, QuantConfig(method=Method.INT8), None)
        lg, lr = model(ev).logits.float(), rtn(ev).logits.float()
    assert all(isinstance(m, Int8Linear) for n, m in model.named_modules() if n.endswith("q_proj"))
    err_g, err_r = float((lg - ref).norm() / ref.norm()), float((lr - ref).norm() / ref.norm())
    assert err_g < err_r, (err_g, err_r)
    save_quantized(model, tok, tmp_path / "q", cfg)
    back, _ = load_model(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(back(ev).logits, model(ev).logits)

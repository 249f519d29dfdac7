"""The combined recipe on tiny-llama: config validation, compress -> load exactness, sizes, recovery step."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from leanlm import load
from leanlm.compress import compress
from leanlm.compress.lowrank.embedding import EmbedMethod, compress_table, embedding_rank, rebuild_table
from leanlm.compress.lowrank.svd import cholesky_of_covariance
from leanlm.compress.recipes import CombinedConfig, Step, run_combined, save_combined
from leanlm.compress.recover import RecoveryConfig, recover
from leanlm.config import ConfigError, from_dict, to_dict

TINY = {"group_size": 32, "calib_n": 4, "calib_seq_len": 64, "awq_calib_n": 4, "awq_calib_seq_len": 64}


def test_config_validates_order_and_round_trips():
    with pytest.raises(ConfigError, match="lossless must be the last"):
        CombinedConfig(steps=(Step.LOSSLESS, Step.AWQ))
    with pytest.raises(ConfigError, match="before awq"):
        CombinedConfig(steps=(Step.AWQ, Step.RECOVER))
    with pytest.raises(ConfigError, match="include 'awq-w4'"):
        CombinedConfig(steps=(Step.EMBED, Step.LOSSLESS))
    cfg = CombinedConfig(steps=(Step.EMBED, Step.RECOVER, Step.AWQ), embed_method=EmbedMethod.WHITENED_SVD)
    assert from_dict(CombinedConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_embedding_factors_budget_and_whitening():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(300, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g, dtype=torch.float64)
    h = torch.randn(500, 24, generator=g, dtype=torch.float64) * torch.linspace(0.1, 5, 24, dtype=torch.float64)
    chol = cholesky_of_covariance(h.T @ h, 0.0)
    r = embedding_rank(300, 24, 0.3)
    assert r * (300 + 24) <= int(300 * 24 * 0.7) < (r + 1) * (300 + 24)
    errs = {}
    for m in (EmbedMethod.SVD, EmbedMethod.WHITENED_SVD):
        t = compress_table(table, m, 0.3, chol)
        assert t["a_codes"].dtype == torch.int8 and t["a_codes"].shape == (300, r)
        errs[m] = float(((rebuild_table(t, torch.float64) - table) @ h.T).norm())  # logit error
    assert errs[EmbedMethod.WHITENED_SVD] < errs[EmbedMethod.SVD]
    t8 = compress_table(table, EmbedMethod.INT8, 0.3)
    assert float((rebuild_table(t8, torch.float64) - table).norm() / table.norm()) < 0.01
    wide = torch.randn(50, 64, dtype=torch.float64)
    wide[:, 0] *= 20  # an outlier coarsens its whole row's grid, but only its own group's with groups
    err = {m: float((rebuild_table(compress_table(wide, m, 0.3), torch.float64) - wide)[:, 32:].norm())
           for m in (EmbedMethod.INT8, EmbedMethod.INT8_G32)}  # the group without the outlier
    assert err[EmbedMethod.INT8_G32] < 0.2 * err[EmbedMethod.INT8]


@pytest.mark.parametrize("steps", [(Step.EMBED, Step.AWQ, Step.LOSSLESS), (Step.EMBED, Step.AWQ)])
def test_combined_save_load_is_exact(tiny, tmp_path, steps):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]  # float32 throughout (a bf16 cast would also round RoPE buffers)
    cfg = CombinedConfig(steps=steps, embed_method=EmbedMethod.WHITENED_SVD, embed_remove=0.2, **TINY)
    embed_t, report = run_combined(model, tok, cfg)
    doc = save_combined(model, tok, embed_t, cfg, tmp_path / "c", report)
    assert doc["inner"] == ("packed" if Step.LOSSLESS in steps else "plain")
    loaded, _ = load(str(tmp_path / "c"), dtype="fp32")
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    ids = torch.randint(3, 90, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert report["embed"]["params_after"] <= 0.8 * report["embed"]["params_before"]


def test_combined_cli_and_corruption(tmp_path):
    out = tmp_path / "cb"
    summary = compress("tiny-llama", "combined", out, {"config": {**TINY, "embed_method": "int8"}})
    assert summary["bytes_on_disk"] > 0 and summary["steps"] == ["embed", "awq-w4", "lossless"]
    model, tok = load(str(out), dtype="bf16")
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Int4Linear"
    f = next((out / "packed").rglob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load(str(out), dtype="bf16")


def test_recovery_with_int4_fake_quant_trains_dense_linears(tiny):
    from leanlm.compress.quant.primitives import fake_quantize_int4

    model = copy.deepcopy(tiny[0])
    ids = torch.randint(3, 90, (8, 32), generator=torch.Generator().manual_seed(1))
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    rep = recover(model, tiny[1], RecoveryConfig(steps=4, lr=1e-2, batch_size=2, seq_len=32, warmup=0), ids,
                  weight_fake_quant=lambda w: fake_quantize_int4(w, 32))
    w = model.model.layers[0].mlp.up_proj.weight
    assert type(w) is torch.nn.Parameter and not torch.equal(w, before)  # parametrization removed, weight trained
    assert len(rep["losses"]) == 4


def test_combined_cli_remove_needs_a_low_rank_embedding():
    from leanlm.compress.recipes import combined_config

    assert combined_config({"remove": 0.3, "config": {"embed_method": "whitened-svd"}}).embed_remove == 0.3
    assert combined_config({}).embed_method == EmbedMethod.INT8_G32
    with pytest.raises(ValueError, match="full rank"):
        combined_config({"remove": 0.3})

"""End to end on tiny-llama: compress -> save -> load -> evaluate, int8 round trips, recovery."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from leanlm import load
from leanlm.compress import compress
from leanlm.compress.calib import calibration_ids
from leanlm.compress.lowrank.budget import DENSE
from leanlm.compress.lowrank.config import Execution, LowRankConfig, Method, TTConfig
from leanlm.compress.lowrank.decompose import decompose_model
from leanlm.compress.lowrank.modules import LowRankLinear
from leanlm.compress.lowrank.store import LowRankFormatError, load_lowrank, save_lowrank
from leanlm.compress.lowrank.ttembed import tt_compress_embedding
from leanlm.compress.recover import Finish, RecoveryConfig, recover
from leanlm.eval import EvalConfig, evaluate

SMALL = {"n_calib": 8, "seq_len": 64, "batch_size": 4}


@pytest.fixture(scope="module")
def calib(tiny):
    return calibration_ids(tiny[1], 8, 64, 0)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("method", list(Method))
def test_decompose_meets_budget_on_model(tiny, calib, method):
    model = copy.deepcopy(tiny[0])
    rep = decompose_model(model, LowRankConfig(method=method, remove=0.25, **SMALL), calib)
    assert rep.target_kept <= rep.target_budget
    slack = rep.target_budget - rep.target_kept
    assert slack < min(o + i for o, i in rep.shapes.values())
    assert rep.target_budget == int(rep.target_dense_params * 0.75)
    n_lr = sum(isinstance(m, LowRankLinear) for m in model.modules())
    assert n_lr == sum(r != DENSE for r in rep.ranks.values()) > 0


def test_whitened_beats_plain_on_calibration_outputs(tiny, calib):
    """Layer-wise: whitened factors reproduce the calibration outputs better than plain SVD at equal ranks."""
    outs = {}
    for method in Method:
        model = copy.deepcopy(tiny[0])
        decompose_model(model, LowRankConfig(method=method, remove=0.4, allow_dense=False, **SMALL), calib)
        outs[method] = _logits(model, calib[:4])
    ref = _logits(tiny[0], calib[:4])
    err = {m: float((o - ref).norm() / ref.norm()) for m, o in outs.items()}
    assert err[Method.WHITENED] < err[Method.SVD]


def test_int8_save_load_round_trip_exact(tiny, calib, tmp_path):
    model = copy.deepcopy(tiny[0])
    decompose_model(model, LowRankConfig(remove=0.3, **SMALL), calib)
    save_lowrank(model, tiny[1], tmp_path / "m", {"source": "tiny-llama"}, dtype=torch.float32)
    loaded, _ = load_lowrank(tmp_path / "m", torch.float32)
    want = {k: v for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert any(v.dtype == torch.int8 for v in got.values())
    ids = calib[:2]
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    # dense execution rebuilds W = A B: same function up to float rounding
    dense, _ = load_lowrank(tmp_path / "m", torch.float32, execution=Execution.DENSE)
    assert not any(isinstance(m, LowRankLinear) for m in dense.modules())
    torch.testing.assert_close(_logits(dense, ids), _logits(model, ids), rtol=1e-4, atol=1e-4)


def test_corrupt_weights_are_refused(tiny, calib, tmp_path):
    model = copy.deepcopy(tiny[0])
    decompose_model(model, LowRankConfig(method=Method.SVD, remove=0.3, **SMALL), calib)
    save_lowrank(model, tiny[1], tmp_path / "m", {})
    f = tmp_path / "m" / "weights.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(LowRankFormatError, match="SHA-256"):
        load_lowrank(tmp_path / "m")


def test_tt_embedding_round_trip(tiny, tmp_path):
    model = copy.deepcopy(tiny[0])
    tt, rep = tt_compress_embedding(model, TTConfig(remove=0.3))
    assert rep["params_after"] <= rep["budget"] and rep["relative_error"] < 1
    save_lowrank(model, tiny[1], tmp_path / "t", {}, dtype=torch.float32, tt=tt)
    stored = load_file(str(tmp_path / "t" / "weights.safetensors"))
    assert "model.embed_tokens.weight" not in stored and stored["tt.core0.codes"].dtype == torch.int8
    loaded, _ = load_lowrank(tmp_path / "t", torch.float32)
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight, rtol=0, atol=1e-6)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied


@pytest.mark.parametrize("method", ["svd", "lowrank", "tt-embed"])
def test_cli_compress_load_eval(method, tmp_path):
    out = tmp_path / method
    summary = compress("tiny-llama", method, out, {"remove": 0.2, "config": SMALL if method != "tt-embed" else None})
    manifest = json.loads((out / "leanlm.json").read_text())
    assert manifest["format"] == "leanlm.lowrank" and summary["bytes_on_disk"] > 0
    model, tok = load(str(out), dtype="fp32")
    doc = evaluate(model, tok, EvalConfig(tasks=(), speed=False, max_tokens=600, context=128, stride=128, progress=False))
    ppl = doc["perplexity"]["perplexity"]
    base, btok = load("tiny-llama", dtype="fp32")
    base_ppl = evaluate(base, btok, EvalConfig(tasks=(), speed=False, max_tokens=600, context=128, stride=128,
                                               progress=False))["perplexity"]["perplexity"]
    assert 0.5 * base_ppl < ppl < 2 * base_ppl  # an untrained tiny model: compression must not break it


def test_recovery_qat_lowers_loss_and_keeps_int8(tiny, calib):
    model = copy.deepcopy(tiny[0])
    decompose_model(model, LowRankConfig(remove=0.3, **SMALL), calib)
    ids = calibration_ids(tiny[1], 24, 64, seed=1)
    with torch.no_grad():
        before = float(model(input_ids=ids[:8], labels=ids[:8]).loss)
    rep = recover(model, tiny[1], RecoveryConfig(steps=12, lr=3e-3, batch_size=4, seq_len=64, warmup=2), ids)
    with torch.no_grad():
        after = float(model(input_ids=ids[:8], labels=ids[:8]).loss)
    assert len(rep["losses"]) == 12 and after < before - 0.05
    assert all(isinstance(model.get_submodule(n), LowRankLinear) for n, m in model.named_modules()
               if isinstance(m, LowRankLinear)) and any(isinstance(m, LowRankLinear) for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())


def test_recovery_only_trains_decomposed_positions(tiny, calib):
    model = copy.deepcopy(tiny[0])
    decompose_model(model, LowRankConfig(remove=0.3, **SMALL), calib)
    emb = model.model.embed_tokens.weight.clone()
    norm = model.model.norm.weight.clone()
    recover(model, tiny[1], RecoveryConfig(steps=2, lr=1e-2, batch_size=2, seq_len=32, warmup=0,
                                           finish=Finish.TRAINABLE), calibration_ids(tiny[1], 4, 32, 1))
    assert torch.equal(model.model.embed_tokens.weight, emb) and torch.equal(model.model.norm.weight, norm)

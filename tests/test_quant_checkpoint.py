"""Quantised checkpoints: exact save/load round trips, corruption detection, compress -> load -> eval."""
from __future__ import annotations

import json

import pytest
import torch

import leanlm
from leanlm.compress.quant.api import compress_cli, load_model, quantize_model, save_quantized
from leanlm.compress.quant.checkpoint import QuantCheckpointError, checkpoint_tensors, load_quantized
from leanlm.compress.quant.config import Method, QuantConfig
from leanlm.compress.quant.modules import Int4Linear, Int8BlockLinear, Int8Linear, W8A8Linear
from leanlm.eval import EvalConfig, evaluate
from leanlm.eval.memory import memory_bytes

SMALL = dict(calib_n=6, calib_seq_len=48, calib_batch=3, alpha_grid=(0.4, 0.6), alpha_eval_n=2, awq_grid=4,
             clip_grid=4, awq_tokens=128, clip_tokens=64, group_size=32)
IDS = torch.randint(3, 90, (2, 40), generator=torch.Generator().manual_seed(0))
KIND = {"int8": Int8Linear, "gptq-int8": Int8Linear, "awq-int8": Int8Linear, "w8a8": W8A8Linear, "smoothquant": W8A8Linear, "rtn-w4": Int4Linear,
        "int8-block": Int8BlockLinear,
        "awq-w4": Int4Linear}


def _calib(n=6, t=48):
    return torch.randint(3, 90, (n, t), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", [m.value for m in Method])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_save_load_round_trip_is_exact(tmp_path, method, dtype):
    model, tok = leanlm.load("tiny-llama", dtype=dtype)
    cfg = QuantConfig(method=Method(method), **SMALL)
    quantize_model(model, cfg, _calib() if cfg.calibrated else None)
    assert sum(isinstance(m, KIND[method]) for m in model.modules()) == 14
    with torch.no_grad():
        ref = model(input_ids=IDS).logits
    save_quantized(model, tok, tmp_path / "q", cfg)
    loaded, tok2, cfg2 = load_quantized(tmp_path / "q", dtype)
    assert cfg2 == cfg
    saved, _ = checkpoint_tensors(model)
    again, _ = checkpoint_tensors(loaded)
    assert saved.keys() == again.keys()
    for k in saved:
        assert saved[k].dtype == again[k].dtype and torch.equal(saved[k], again[k]), k
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, ref)
    assert memory_bytes(loaded) == memory_bytes(model)
    assert tok2("1+2=")["input_ids"] == tok("1+2=")["input_ids"]


def test_checkpoint_header_and_manifest_carry_config(tmp_path):
    from safetensors import safe_open

    model, tok = leanlm.load("tiny-llama", dtype="bf16")
    cfg = QuantConfig(method=Method.RTN_W4, group_size=32)
    quantize_model(model, cfg)
    save_quantized(model, tok, tmp_path / "q", cfg)
    manifest = json.loads((tmp_path / "q" / "leanlm.json").read_text())
    assert manifest["format"] == "leanlm.quant" and manifest["config"]["method"] == "rtn-w4"
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        assert json.loads(meta["quant_config"])["group_size"] == 32
        assert f.get_tensor("model.layers.0.mlp.down_proj.qweight").dtype == torch.uint8
    with pytest.raises(FileExistsError):
        save_quantized(model, tok, tmp_path / "q", cfg)


def test_corrupt_checkpoint_is_rejected(tmp_path):
    model, tok = leanlm.load("tiny-llama", dtype="bf16")
    cfg = QuantConfig(method=Method.INT8)
    quantize_model(model, cfg)
    save_quantized(model, tok, tmp_path / "q", cfg)
    weights = tmp_path / "q" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(QuantCheckpointError, match="checksum"):
        load_model(tmp_path / "q", torch.bfloat16, "cpu")


def test_calibrated_method_without_data_is_an_error():
    model, _ = leanlm.load("tiny-llama", dtype="bf16")
    with pytest.raises(ValueError, match="calib_ids"):
        quantize_model(model, QuantConfig(method=Method.AWQ_W4))


def test_compress_load_eval_end_to_end(tmp_path):
    """``leanlm compress tiny-llama --method awq-w4`` -> ``leanlm.load`` -> ``evaluate`` like any model."""
    out = tmp_path / "awq"
    summary = compress_cli("tiny-llama", out, {"method": "awq-w4", "force": False, "remove": None, **SMALL})
    assert summary["quantized_modules"] == 14 and (out / "leanlm.json").is_file()
    cfg = EvalConfig(max_tokens=600, context=128, stride=128, tasks=("add:1",), n=4, max_new_tokens=6,
                     speed=False, progress=False)
    base_model, base_tok = leanlm.load("tiny-llama", dtype="bf16")
    model, tok = leanlm.load(str(out))
    assert isinstance(model.model.layers[0].mlp.down_proj, Int4Linear)
    with torch.inference_mode():
        base = evaluate(base_model, base_tok, cfg)
        got = evaluate(model, tok, cfg)
    ppl, ppl0 = got["perplexity"]["perplexity"], base["perplexity"]["perplexity"]
    assert abs(ppl / ppl0 - 1) < 0.02, (ppl, ppl0)
    assert got["memory"]["weights_in_memory_bytes"] < base["memory"]["weights_in_memory_bytes"]
    assert "add:1" in got["tasks"]


def test_cli_compress_then_eval(tmp_path):
    """The CLI path: ``leanlm compress tiny-llama --method int8 -o OUT`` then ``leanlm eval OUT``."""
    from leanlm.cli import main

    out, doc = tmp_path / "int8", tmp_path / "eval.json"
    assert main(["compress", "tiny-llama", "--method", "int8", "-o", str(out)]) == 0
    assert main(["compress", "tiny-llama", "--method", "int8", "-o", str(out)]) != 0   # exists, no --force
    assert main(["compress", "tiny-llama", "--method", "int8", "-o", str(out), "--force"]) == 0
    assert main(["eval", str(out), "--max-tokens", "300", "--context", "64", "--stride", "64", "--n", "2",
                 "--tasks", "add:1", "--no-speed", "--no-progress", "--json", str(doc)]) == 0
    result = json.loads(doc.read_text())["results"]
    assert 1.0 < result["perplexity"]["perplexity"] < 200.0
    assert result["memory"]["weights_on_disk_bytes"] > 0


@pytest.mark.real_model
def test_int8_smollm2_perplexity_within_half_percent():
    """The issue's INT8 goal on a 1024-token slice of the eval split (the benchmark: full protocol)."""
    from leanlm.eval.corpus import load_corpus, split_corpus
    from leanlm.eval.perplexity import corpus_ids, perplexity

    model, tok = leanlm.load("smollm2-135m")
    ids = corpus_ids(tok, split_corpus(load_corpus(), "eval"), 1024)
    base = perplexity(model, ids, 512, 512, 2, progress=False).perplexity
    quantize_model(model, QuantConfig(method=Method.INT8))
    got = perplexity(model, ids, 512, 512, 2, progress=False).perplexity
    assert got <= base * 1.005, (got, base)
    assert memory_bytes(model) < 0.62 * 269_030_144   # int8 linears + bf16 embedding (measured 60.7%)


def test_int8_artifact_generates_after_reload_in_a_subprocess(tmp_path):
    """Regression: weights mapped from safetensors at a misaligned offset crashed aten's int8 kernel
    (segfault at >= 4 rows). Run in a subprocess so a crash fails this test instead of killing pytest."""
    import subprocess
    import sys

    from leanlm.compress import compress

    compress("tiny-llama", "int8", tmp_path / "q", {})
    code = ("import torch, leanlm\n"
            f"m, t = leanlm.load({str(tmp_path / 'q')!r})\n"
            "x = torch.randint(3, 90, (8, 5))\n"
            "out = m.generate(x, max_new_tokens=3, do_sample=False, pad_token_id=t.pad_token_id)\n"
            "assert out.shape == (8, 8)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

"""compressed-tensors export: the grid math, the files the package expects, transformers loading them.

Each check has its own reference: the package's own decompressor for the tensors (exact), leanlm's integer
modules holding the same codes for the logits (a tolerance the unquantised model fails).
"""
import json

import pytest
import torch
from safetensors.torch import load_file

import leanlm
from leanlm.export import ctensors as ct
from leanlm.export import ctgrid, export

IDS = torch.randint(3, 60, (2, 40), generator=torch.Generator().manual_seed(0))
TEXT = "\n\n".join(f"{i} plus {i + 3} is {2 * i + 3}; the sum of {i} and {i} is {2 * i}." for i in range(400))


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(TEXT)
    return str(p)


# ------------------------------------------------------------------------------------------ grid math
def test_int4_group_grid_bounds():
    w = torch.randn(16, 128) * torch.linspace(0.1, 3, 128)
    w[0, :64] = 0.0
    q, s, z = ctgrid.quantize_int4_group(w, 64, torch.float32)
    assert q.dtype == z.dtype == torch.int8 and s.shape == z.shape == (16, 2)
    assert int(q.min()) >= -8 and int(q.max()) <= 7 and int(z.min()) >= -8 and int(z.max()) <= 7
    deq = ctgrid.dequantize(q, s, z)
    err = (deq - w).abs().view(16, 2, 64)
    assert bool((err <= s[..., None] * 0.5 + 1e-6).all())          # round to nearest within the range
    assert torch.equal(deq[0, :64], torch.zeros(64))                  # zero stays exact


def test_int8_channel_grid():
    w = torch.randn(8, 96)
    q, s = ctgrid.quantize_int8_channel(w, torch.bfloat16)
    assert s.dtype == torch.bfloat16 and s.shape == (8, 1) and int(q.abs().max()) <= 127
    assert float(((ctgrid.dequantize(q, s.float()) - w).abs() - s.float() * 0.5).max()) <= 1e-6


def test_int8_group_grid_is_leanlms_int8_block_grid():
    from leanlm.compress.quant.primitives import quantize_int8_blocks

    w = torch.randn(8, 96) * torch.linspace(0.1, 3, 96)
    q, s = ctgrid.quantize_int8_group(w, 32, torch.bfloat16)
    q2, s2 = quantize_int8_blocks(w, 32, torch.bfloat16)
    assert s.shape == (8, 3) and torch.equal(q, q2) and torch.equal(s.float(), s2)
    assert float(((ctgrid.dequantize(q, s.float()) - w).abs().view(8, 3, 32) - s.float()[..., None] * 0.5).max()) <= 1e-6


def test_group_fallback():
    assert ctgrid.group_size_for(576, 64) == 64
    assert ctgrid.group_size_for(608, 64) == 32
    with pytest.raises(ValueError, match="multiple of 32"):
        ctgrid.group_size_for(600, 64)


# ------------------------------------------------------------------------------------------ files
SCHEMES = {  # scheme -> (compression format, num_bits, strategy, symmetric, activations)
    "W8A8": ("int-quantized", 8, "channel", True, True),
    "W8A16": ("pack-quantized", 8, "channel", True, False),
    "W8A16-G32": ("pack-quantized", 8, "group", True, False),
    "W4A16": ("pack-quantized", 4, "group", False, False),
    "W4A16-RTN": ("pack-quantized", 4, "group", False, False),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, calib_file):
    """scheme -> (directory, our layers, reference logits of leanlm's integer model, float logits).
    The reference logits are computed before transformers loads anything compressed-tensors."""
    out = {}
    root = tmp_path_factory.mktemp("ct")
    with torch.no_grad():
        float_logits = leanlm.load("tiny-llama", dtype="bf16")[0](input_ids=IDS).logits.float()
    for name in SCHEMES:
        cfg = ct.CTConfig(scheme=ct.Scheme(name), calib=calib_file, calib_n=4, calib_seq_len=64)
        model, tok = leanlm.load("tiny-llama", dtype="bf16")
        doc, layers = ct.export_model(model, tok, root / name, cfg)
        with torch.no_grad():
            ref = ct.leanlm_model(model, layers, cfg)(input_ids=IDS).logits.float()
        out[name] = (root / name, layers, ref, float_logits, doc)
    return out


@pytest.mark.parametrize("name", list(SCHEMES))
def test_config_is_what_compressed_tensors_expects(exports, name):
    from compressed_tensors.quantization import QuantizationConfig

    path, layers, *_ = exports[name]
    fmt, bits, strategy, symmetric, acts = SCHEMES[name]
    raw = json.loads((path / "config.json").read_text())["quantization_config"]
    assert raw["quant_method"] == "compressed-tensors" and raw["quantization_status"] == "compressed"
    qc = QuantizationConfig.model_validate(raw)
    assert qc.format == fmt and qc.ignore == ["lm_head"] and len(qc.config_groups) == 1
    scheme = next(iter(qc.config_groups.values()))
    w = scheme.weights
    assert (w.num_bits, w.strategy, w.symmetric) == (bits, strategy, symmetric)
    assert w.group_size == (64 if bits == 4 else 32 if strategy == "group" else None)
    if acts:
        a = scheme.input_activations
        assert (a.num_bits, a.strategy, a.dynamic, a.symmetric) == (8, "token", True, True)
    else:
        assert scheme.input_activations is None
    assert len(layers) == 2 * 7   # every block linear of tiny-llama's 2 layers; lm_head stays dense


@pytest.mark.parametrize("name", list(SCHEMES))
def test_package_decompresses_exactly_our_weights(exports, name):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    path, layers, *_ = exports[name]
    qc = QuantizationConfig.model_validate(json.loads((path / "config.json").read_text())["quantization_config"])
    scheme = next(iter(qc.config_groups.values()))
    comp = BaseCompressor.get_value_from_registry(qc.format)
    sd = load_file(str(path / "model.safetensors"))
    assert "lm_head.weight" not in sd   # tied to the embedding, stored once
    expected = set(comp.compression_param_names(scheme))
    for lname, ql in layers.items():
        local = {k[len(lname) + 1:]: v for k, v in sd.items() if k.startswith(lname + ".")}
        assert set(local) == expected, (lname, sorted(local))
        # what we meant, computed independently of the package: (q - zp) * scale in the scale's dtype
        zp = 0 if ql.zero_point is None else ql.zero_point.to(ql.scale.dtype).repeat_interleave(ql.group, 1)
        scale = ql.scale.repeat_interleave(ql.q.shape[1] // ql.scale.shape[1], 1)
        meant = (ql.q.to(ql.scale.dtype) - zp) * scale
        got = comp.decompress(local, scheme)["weight"]
        assert got.dtype == meant.dtype and torch.equal(got, meant), lname


@pytest.mark.parametrize("name", list(SCHEMES))
def test_transformers_loads_with_leanlm_logits(exports, name):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    path, _, ref, float_logits, _ = exports[name]
    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if name.startswith("W4") else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kw)
    with torch.no_grad():
        got = model(input_ids=IDS).logits.float()
    diff = float((got - ref).abs().max())
    assert diff < 0.03, diff
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.97
    if name.startswith("W4"):   # the tolerance is tight enough that the unquantised model fails it
        assert float((float_logits - ref).abs().max()) > 0.03


def test_manifest_and_files(exports):
    path, *_, doc = exports["W4A16"]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
              "leanlm-export.json"):
        assert (path / f).is_file(), f
    assert doc["files"]["model.safetensors"]["bytes"] == (path / "model.safetensors").stat().st_size
    assert doc["config"]["scheme"] == "W4A16" and "awq_alpha_mean" in doc["calibration"]


# ------------------------------------------------------------------------------------------ errors
def test_bad_type_and_existing_output(tmp_path, calib_file):
    with pytest.raises(ValueError, match="W8A8"):
        export("tiny-llama", "compressed-tensors", tmp_path / "x", {"qtype": "Q4_K"})
    opts = {"qtype": "W8A16"}
    export("tiny-llama", "compressed-tensors", tmp_path / "y", opts)
    with pytest.raises(FileExistsError):
        export("tiny-llama", "compressed-tensors", tmp_path / "y", opts)
    export("tiny-llama", "compressed-tensors", tmp_path / "y", {**opts, "force": True})
    with pytest.raises(Exception, match="no-such-model"):
        export("no-such-model", "compressed-tensors", tmp_path / "z", opts)


def test_transformers_at_vllm_activation_scale(exports):
    """compressed-tensors' reference quantises W8A8 activations per token at absmax / 127.5;
    ``use_vllm_activation_scale`` makes transformers use vLLM's absmax / 127 in every such layer."""
    from leanlm.export.vllm import transformers_model, use_vllm_activation_scale

    def seen(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = model.model.layers[0].self_attn.q_proj
        got = {}
        h = q.register_forward_hook(lambda mod, i, o: got.update(x=i[0].detach(), y=o.detach()))
        with torch.no_grad():
            model(input_ids=IDS)
        h.remove()
        return got["x"], got["y"], q.weight.detach().float()

    def fq(x: torch.Tensor, d: float) -> torch.Tensor:
        s = x.abs().amax(-1, keepdim=True) / d
        return (x / s).round().clamp(-128, 127) * s

    path = exports["W8A8"][0]
    x, y, w = seen(transformers_model(path, "fp32"))      # the package's own: the hook sees the raw input
    assert torch.allclose(y, fq(x, 127.5) @ w.T, atol=1e-4) and not torch.allclose(y, fq(x, 127.0) @ w.T, atol=1e-3)
    model = transformers_model(path, "fp32")
    assert use_vllm_activation_scale(model) == 14
    xq, y2, w = seen(model)                               # now the hook sees the input quantised at / 127
    steps = xq / (xq.abs().amax(-1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-3) and torch.allclose(y2, xq @ w.T, atol=1e-4)
    other = transformers_model(path, "fp32")              # another activation scheme is refused, not guessed
    other.model.layers[1].mlp.up_proj.quantization_scheme.input_activations.strategy = "tensor"
    with pytest.raises(ValueError, match="per-token"):
        use_vllm_activation_scale(other)

"""SmoothQuant and AWQ: function-preserving transforms (exact in float) and error reductions they promise."""
from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from leanlm.compress.quant import awq, smoothquant
from leanlm.compress.quant.config import Method, QuantConfig
from leanlm.compress.quant.modules import W8A8Linear
from leanlm.compress.quant.primitives import fake_quantize_int4
from leanlm.compress.quant.quantize import awq_pass, collect_absmax, group_applies, smooth
from leanlm.models.arch import UnknownArchitectureError, arch_for, decoder_layers
from leanlm.models.tiny import TINY_CONFIGS, build_tiny

IDS = torch.randint(3, 90, (4, 32), generator=torch.Generator().manual_seed(0))


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(p + 0.5 * torch.rand(p.shape, generator=g, dtype=p.dtype))


def _tiny_llama(dtype: torch.dtype) -> torch.nn.Module:
    model, _ = build_tiny(TINY_CONFIGS["tiny-llama"], torch.float32)
    _randomise_norms(model)
    return model.to(dtype).eval()


def _tiny_gemma3(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                           max_position_embeddings=128, sliding_window=16)
    model = Gemma3ForCausalLM(cfg)
    _randomise_norms(model)
    return model.to(dtype).eval()


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("builder", [_tiny_llama, _tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@torch.no_grad()
def test_smoothquant_transform_preserves_float_outputs(builder, dtype, tol):
    model = builder(dtype)
    ref = model(input_ids=IDS).logits
    arch = arch_for(model)
    stats = collect_absmax(model, arch, IDS, QuantConfig(method=Method.SMOOTHQUANT, calib_batch=2))
    assert all(len(s) == len(arch.groups) for s in stats)     # every group smoothed (no GQA here)
    before = decoder_layers(model)[0].input_layernorm.weight.clone()
    smooth(model, arch, stats, alpha=0.5)
    assert not torch.allclose(decoder_layers(model)[0].input_layernorm.weight, before)  # it did something
    if builder is _tiny_gemma3 and dtype == torch.float64:
        tol = 1e-6   # Gemma3RMSNorm casts its weight to float32 internally (x * (1 + w.float()))
    assert _rel_diff(model(input_ids=IDS).logits, ref) < tol


@pytest.mark.parametrize("builder", [_tiny_llama, _tiny_gemma3], ids=["llama", "gemma3"])
@torch.no_grad()
def test_awq_scaled_model_equals_unscaled_in_float(builder):
    model = builder(torch.float64)
    ref = model(input_ids=IDS).logits
    cfg = QuantConfig(method=Method.AWQ_W4, group_size=32, calib_batch=2, awq_grid=5, clip_grid=4,
                      awq_tokens=64, clip_tokens=32)
    found = awq_pass(model, arch_for(model), cfg, IDS)
    assert any(a > 0 for a in found["alphas"].values())        # scales were actually applied somewhere
    tol = 1e-6 if builder is _tiny_gemma3 else 1e-10   # Gemma's norm computes in float32
    assert _rel_diff(model(input_ids=IDS).logits, ref) < tol
    assert all((c > 0) & (c <= 1) for c in (v.min() for v in found["clips"].values()))


def test_gqa_v_to_o_pair_is_skipped():
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=96)
    block = decoder_layers(LlamaForCausalLM(cfg))[0]
    applies = {g.prev: group_applies(block, g) for g in arch_for("llama").groups}
    assert applies == {"input_layernorm": True, "self_attn.v_proj": False, "post_attention_layernorm": True,
                       "mlp.up_proj": True}


def test_unknown_architecture_names_known_ones():
    with pytest.raises(UnknownArchitectureError, match="llama"):
        arch_for("gpt2")


def _outlier_inputs(t=512, k=128, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g)
    x[:, :4] *= 30.0             # a few outlier channels, as in LLM activations
    return x


def test_smoothquant_halves_w8a8_error_on_outlier_activations():
    x = _outlier_inputs()
    lin = torch.nn.Linear(128, 64, bias=False)
    ref = lin(x).detach()
    naive = W8A8Linear.from_float(lin, torch.float32)(x)
    s = smoothquant.smoothing_scales(smoothquant.channel_absmax(x), [lin.weight.detach()], alpha=0.5)
    smoothed = torch.nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        smoothed.weight.copy_(lin.weight * s[None, :])
    out = W8A8Linear.from_float(smoothed, torch.float32)(x / s)
    err_naive, err_smooth = (naive - ref).pow(2).mean(), (out - ref).pow(2).mean()
    assert err_smooth < 0.5 * err_naive


def test_awq_search_beats_rtn_on_salient_channels():
    x = _outlier_inputs(k=256)
    torch.manual_seed(1)
    w = torch.randn(96, 256) * 0.02
    def quant(v):
        return fake_quantize_int4(v, 128)
    s, alpha, losses = awq.search_scale(x, [w], quant, grid=20)
    assert alpha > 0 and min(losses) == losses[int(round(alpha * 20))]
    assert min(losses) < 0.5 * losses[0]                 # losses[0] is alpha = 0: plain RTN
    clip = awq.search_clip(x / s, w * s, 128, grid=10, max_shrink=0.5)
    ref = x @ w.t()
    scaled = (x / s) @ fake_quantize_int4(w * s, 128).t()
    clipped = (x / s) @ fake_quantize_int4(w * s, 128, clip).t()
    assert (clipped - ref).pow(2).mean() <= (scaled - ref).pow(2).mean() * 1.0001

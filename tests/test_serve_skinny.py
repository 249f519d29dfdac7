"""The batched-decode matrix kernel (serve/backends/skinny.c): exact shapes, batch invariance, patching."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leanlm.serve.backends import skinny

pytestmark = pytest.mark.skipif(not skinny.available(), reason="needs a C compiler and an AVX2+FMA CPU")


@pytest.mark.parametrize("m,n,k", [(1, 7, 5), (2, 3, 8), (3, 10, 13), (4, 2, 8), (5, 49, 640), (8, 100, 9),
                                   (8, 1536, 576), (16, 577, 1536), (17, 31, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_float64_reference(m, n, k, bias):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    ref = F.linear(x.double(), w.double(), b.double() if bias else None)
    y = skinny.linear(x, w, b)
    assert y.shape == (m, n) and y.dtype == torch.float32
    # fp32 dot products of length k: error grows like sqrt(k) * eps * |x||w|
    tol = 4e-7 * (k ** 0.5) * float(x.abs().max() * w.abs().max()) * 8
    assert (y.double() - ref).abs().max().item() < tol


def test_strided_rows_and_3d_inputs():
    g = torch.Generator().manual_seed(3)
    big, w = torch.randn(6, 2, 40, generator=g), torch.randn(24, 40, generator=g)
    x = big[:, 1, :]                                   # rows 80 floats apart: read in place, not copied
    torch.testing.assert_close(skinny.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    x3 = torch.randn(2, 3, 40, generator=g)
    torch.testing.assert_close(skinny.linear(x3, w), F.linear(x3, w), rtol=1e-5, atol=1e-5)
    lin = torch.nn.Linear(40, 24)
    skinny.patch(lin)
    with torch.no_grad():
        for odd in (x3[:1].expand(4, 3, 40), x3.transpose(0, 1), big[:, 1, :]):   # broadcast, transposed, strided
            torch.testing.assert_close(lin(odd), F.linear(odd, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


def test_a_row_is_the_same_in_any_batch():
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(8, 576, generator=g), torch.randn(150, 576, generator=g)
    together = skinny.linear(x, w)
    for i in range(8):
        assert torch.equal(skinny.linear(x[i:i + 1], w)[0], together[i])
    assert torch.equal(skinny.linear(x[2:5], w), together[2:5])


def test_bad_inputs_name_the_problem():
    w = torch.randn(4, 8)
    with pytest.raises(TypeError, match="fp32"):
        skinny.linear(torch.randn(2, 8, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="input has 7 features, the weight takes 8"):
        skinny.linear(torch.randn(2, 7), w)


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_patch_routes_batched_calls_and_keeps_the_model_exact(monkeypatch):
    model = _tiny()
    ids = torch.randint(0, 97, (4, 1))                 # a decode step of 4 rows: on the kernel
    with torch.no_grad():
        before = model(input_ids=ids).logits
    n = skinny.patch(model)
    assert n == sum(type(m) is torch.nn.Linear for m in model.modules()) == 2 * 7 + 1
    calls = []
    lib = skinny._library()

    class Counting:                                    # the library, counting the kernel's calls (rows each)
        def sk_linear(self, *a):
            calls.append(a[6])
            return lib.sk_linear(*a)

    monkeypatch.setattr(skinny, "_library", Counting)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert calls == [4] * n
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        model(input_ids=ids[:1])                       # one row and long prefills stay on PyTorch
        model(input_ids=torch.randint(0, 97, (1, 40)))
    assert calls == []
    loss = model(input_ids=ids.view(1, 4), labels=ids.view(1, 4)).loss   # autograd: PyTorch's path
    loss.backward()
    assert calls == [] and model.lm_head.weight.grad is not None


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("LEANLM_NO_SKINNY", "1")
    assert not skinny.available() and skinny.patch(_tiny()) == 0

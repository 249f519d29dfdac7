"""Grid-preserving quantisation (``export/gguf_grid``): values already on a block format's grid are found and
coded on it bit-exactly (checked by gguf-py's dequantiser), nothing else is touched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from leanlm.export.gguf import GGUFExportConfig, quantise_tensor  # noqa: E402
from leanlm.export.gguf_grid import grid_blocks  # noqa: E402
from leanlm.export.kquants import FORMATS, pack  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def _decode(blocks: np.ndarray, qtype: str, shape) -> np.ndarray:
    return gguf.quants.dequantize(blocks, FORMATS[qtype].qtype).reshape(shape)


def _llama_like_fields(name: str, n: int, rng) -> dict:
    """K-quant fields as llama.cpp's quantisers leave them: the largest sub-scale (and sub-min) at the end
    of its code range; asymmetric sub-blocks with code 0 present, except a few (the search's repair path).
    ``d`` and ``dmin`` in one binade, so ``d*sc*q - dmin*m`` is exact in float32, as on Gemma 3's Q4_K
    tensors (where a block's dequantisation rounds, the values are off the grid and go to the quantiser)."""
    fmt = FORMATS[name]
    nsub = fmt.block // fmt.sub
    q = rng.integers(fmt.qmin, fmt.qmax + 1, size=(n, nsub, fmt.sub))
    scale = lambda: rng.uniform(2.0 ** -10, 2.0 ** -9, n).astype(np.float32)  # noqa: E731
    f = {"d": scale()}
    if fmt.asym:
        q[:, :, 0] = 0
        q[:5, 1:3, 0] = 1 + (q[:5, 1:3, 0] % 2)                     # no code 0 in these sub-blocks
        q[:5, 1:3] = np.maximum(q[:5, 1:3], 1)
        f["sc"] = rng.integers(1, fmt.sc_max + 1, size=(n, nsub))
        f["sc"][:, 0] = fmt.sc_max
        f["dmin"] = scale()
        f["mn"] = rng.integers(0, fmt.m_max + 1, size=(n, nsub))
        f["mn"][:, 3] = fmt.m_max
    else:
        f["sc"] = rng.integers(fmt.sc_min, fmt.sc_max + 1, size=(n, nsub))
        f["sc"][:, 0] = fmt.sc_min
    f["q"] = q.reshape(n, -1)
    return f


@pytest.mark.parametrize("name", LEGACY)
def test_gguf_py_quantised_tensor_recovered_byte_for_byte(name):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((48, 256)).astype(np.float32)
    W[0, :32] = 0.0                                                   # a zero block
    raw = gguf.quants.quantize(W, FORMATS[name].qtype)
    x = _decode(raw, name, W.shape)
    blocks, on = grid_blocks(x, name)
    assert on.all()
    # the same bytes as gguf-py wrote, except the zero block (+-0 codes: any that decode to the same bits)
    np.testing.assert_array_equal(blocks[1:], raw.reshape(-1, FORMATS[name].type_size)[1:])
    np.testing.assert_array_equal(_bits(_decode(blocks, name, x.shape)), _bits(x))


@pytest.mark.parametrize("name", KQUANTS)
def test_kquant_grid_recovered_bit_exact(name):
    rng = np.random.default_rng(2)
    raw = pack(name, _llama_like_fields(name, 96, rng))
    x = _decode(raw, name, (24, 1024))
    blocks, on = grid_blocks(x, name)
    assert on.all()
    np.testing.assert_array_equal(_bits(_decode(blocks, name, x.shape)), _bits(x))


@pytest.mark.parametrize("src,dst", [("Q4_1", "Q5_1"), ("Q4_0", "Q5_0"), ("Q5_0", "Q8_0"), ("Q4_0", "Q8_0")])
def test_grid_of_a_smaller_format_held_by_a_larger_one(src, dst):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((32, 128)).astype(np.float32)
    x = _decode(gguf.quants.quantize(W, FORMATS[src].qtype), src, W.shape)
    blocks, on = grid_blocks(x, dst)
    assert on.all()
    np.testing.assert_array_equal(_bits(_decode(blocks, dst, x.shape)), _bits(x))


def test_q4_k_grid_held_by_q5_k():
    rng = np.random.default_rng(4)
    x = _decode(pack("Q4_K", _llama_like_fields("Q4_K", 32, rng)), "Q4_K", (8, 1024))
    blocks, on = grid_blocks(x, "Q5_K")
    assert on.all()
    np.testing.assert_array_equal(_bits(_decode(blocks, "Q5_K", x.shape)), _bits(x))


@pytest.mark.parametrize("name", LEGACY + KQUANTS)
def test_no_grid_in_random_floats(name):
    W = np.random.default_rng(5).standard_normal((16, 512)).astype(np.float32)
    blocks, on = grid_blocks(W, name)
    assert not on.any() and not blocks.any()


@pytest.mark.parametrize("name,method", [("Q4_0", "rtn"), ("Q5_0", "rtn"), ("Q8_0", "rtn"), ("Q4_K", "rtn"),
                                         ("Q6_K", "rtn"), ("Q4_K", "gptq"), ("Q4_1", "gptq")])
def test_no_grid_output_identical_with_and_without_the_feature(name, method):
    rng = np.random.default_rng(6)
    W = rng.standard_normal((32, 512)).astype(np.float32)
    X = rng.standard_normal((256, 512)).astype(np.float32)
    H = torch.from_numpy(X.T @ X / 256)
    on = quantise_tensor(W, name, H, GGUFExportConfig(method=method), {}, "blk.0.attn_q.weight")
    off = quantise_tensor(W, name, H, GGUFExportConfig(method=method, keep_grid=False), {}, "blk.0.attn_q.weight")
    np.testing.assert_array_equal(on[0], off[0])
    assert on[1] == off[1] and on[3] == off[3] == method


def test_partial_grid_falls_back_per_block():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((16, 256)).astype(np.float32)
    x = _decode(gguf.quants.quantize(W, FORMATS["Q5_0"].qtype), "Q5_0", W.shape)
    x[3, 40] += 1e-4                                                  # block (3, 1) leaves the grid
    x[9] = W[9]                                                       # row 9 never was on it
    H = torch.eye(256)
    blocks, rel, deq, how = quantise_tensor(x, "Q5_0", H, GGUFExportConfig(), {}, "w")
    plain = quantise_tensor(x, "Q5_0", H, GGUFExportConfig(keep_grid=False), {}, "w")
    off = np.zeros((16, 8), bool)
    off[3, 1] = off[9] = True
    assert how == f"rtn + grid ({128 - off.sum()} of 128 blocks)"
    per_block = blocks.reshape(16, 8, -1)
    np.testing.assert_array_equal(per_block[off], plain[0].reshape(16, 8, -1)[off])
    decoded = _decode(blocks, "Q5_0", x.shape).reshape(16, 8, 32)
    np.testing.assert_array_equal(_bits(decoded[~off]), _bits(x.reshape(16, 8, 32)[~off]))
    np.testing.assert_array_equal(deq.numpy().reshape(16, 8, 32)[~off], x.reshape(16, 8, 32)[~off])
    assert 0 < rel <= plain[1]


def test_whole_grid_tensor_skips_the_quantiser():
    rng = np.random.default_rng(8)
    x = _decode(pack("Q4_K", _llama_like_fields("Q4_K", 16, rng)), "Q4_K", (8, 512))
    blocks, rel, deq, how = quantise_tensor(x, "Q4_K", None, GGUFExportConfig(), {}, "w")
    assert how == "grid (16 blocks)" and rel == 0.0
    np.testing.assert_array_equal(_bits(_decode(blocks, "Q4_K", x.shape)), _bits(x))

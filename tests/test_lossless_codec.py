"""Bit-exact round trips of the lossless codec, compared through integer views of whole tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanlm.compress.lossless import codec, rans
from leanlm.compress.lossless.codec import CodecConfig
from leanlm.compress.lossless.container import TensorSpan, encode_tensor
from leanlm.compress.lossless.layout import INTEGERS, LAYOUTS, PLAIN, Layout

SMALL = CodecConfig(chunk_values=1024)
# Special bit patterns per width: +-0, +-Inf, NaN payloads (quiet and signalling, both signs), subnormals,
# the largest finite values and the smallest normal.
SPECIAL = {
    "BF16": [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x7FFF, 0x0001, 0x807F, 0x7F7F, 0x0080],
    "F16": [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01, 0x7FFF, 0x0001, 0x83FF, 0x7BFF, 0x0400],
    "F32": [0x0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF,
            0x1, 0x807FFFFF, 0x7F7FFFFF, 0x00800000],
    "F8_E4M3": [0x00, 0x80, 0x7F, 0xFF, 0x01, 0x87, 0x7E, 0x08],
    "F8_E5M2": [0x00, 0x80, 0x7C, 0xFC, 0x7D, 0xFF, 0x01, 0x83],
}


def roundtrip(values: np.ndarray, layout, cfg=SMALL, threads=1) -> np.ndarray:
    enc = codec.encode(values, layout, cfg)
    return codec.decode(enc, threads=threads)


@st.composite
def float_bits(draw, name: str):
    layout = LAYOUTS[name]
    n = draw(st.integers(0, 5000))
    kind = draw(st.sampled_from(["normal", "random", "special", "equal", "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    info = np.iinfo(layout.uint)
    if kind == "random":
        v = rng.integers(0, info.max, n, dtype=layout.uint, endpoint=True)
    elif kind == "special":
        v = rng.choice(np.array(SPECIAL[name], dtype=layout.uint), n)
    elif kind == "equal":
        v = np.full(n, rng.choice(np.array(SPECIAL[name], dtype=layout.uint)), dtype=layout.uint)
    else:
        scale = float(10 ** rng.uniform(-6, 2))
        x = torch.from_numpy(rng.normal(0, scale, n).astype(np.float32))
        tdt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
               "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[name]
        v = x.to(tdt).view({8: torch.uint8, 16: torch.int16, 32: torch.int32}[layout.width]).numpy().view(layout.uint)
        if kind == "mixed" and n:
            idx = rng.integers(0, n, max(1, n // 10))
            v[idx] = rng.choice(np.array(SPECIAL[name], dtype=layout.uint), idx.size)
    return np.ascontiguousarray(v)


@pytest.mark.parametrize("name", list(LAYOUTS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_roundtrip_property(name, data):
    v = data.draw(float_bits(name))
    out = roundtrip(v, LAYOUTS[name], threads=data.draw(st.sampled_from([1, 2])))
    assert out.dtype == v.dtype and np.array_equal(out, v)


@pytest.mark.parametrize("width", [8, 16, 32])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000))
def test_plain_layouts_roundtrip(width, seed, n):
    layout = PLAIN[width]
    v = np.random.default_rng(seed).integers(0, 4, n).astype(layout.uint) * (seed % 7)  # sparse, XOR-like
    assert np.array_equal(roundtrip(v, layout), v)


def _index(plane, meta, layout, count, cfg):
    """The chunk index of an entry as the container stores it (zstd-compressed when ``index_zstd``)."""
    from leanlm.compress.lossless.container import unzip_index

    if not meta.get("index_zstd"):
        return plane
    return unzip_index(plane, -(-count // cfg.chunk_values), len(layout.fields))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn,
                                   torch.float8_e5m2])
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5, 7), (1023,), (1025, 3), (2, 0, 4)])
def test_tensor_roundtrip_odd_shapes(dtype, shape):
    """Whole tensors, compared through an integer view, via the container's tensor encoder."""
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(shape, generator=g) * 3).to(dtype)
    name = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3",
            torch.float8_e5m2: "F8_E5M2"}[dtype]
    data = t.contiguous().view(torch.uint8).numpy().ravel()
    meta, planes = encode_tensor(TensorSpan("w", name, shape, 0, data.size), data, SMALL)
    assert meta["codec"] == ("empty" if data.size == 0 else "rans")
    if data.size:
        layout, count = Layout.from_json(meta["layout"]), data.size // t.element_size()
        enc = codec.Encoded(planes["w:words"], _index(planes["w:index"], meta, layout, count, SMALL),
                            np.frombuffer(__import__("zstandard").decompress(planes["w:tables"].tobytes()), np.uint16),
                            layout, count, SMALL)
        back = torch.from_numpy(codec.decode(enc).view(np.uint8).copy()).view(dtype).reshape(shape)
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()]
        assert torch.equal(back.view(ints), t.view(ints))


@pytest.mark.parametrize("dtype,name", [(torch.int8, "I8"), (torch.uint8, "U8")])
def test_integer_payloads_are_entropy_coded_and_exact(dtype, name):
    """int8 codes of a quantised weight (peaked around 0) code below 8 bits, near their byte entropy."""
    g = torch.Generator().manual_seed(2)
    t = (torch.randn(1 << 18, generator=g) * 12).round().clamp(-127, 127).to(torch.int8)
    t = t if dtype == torch.int8 else t.view(torch.uint8)
    data = t.numpy().view(np.uint8)
    meta, planes = encode_tensor(TensorSpan("q", name, [t.numel()], 0, data.size), data, CodecConfig())
    assert meta["codec"] == "rans" and meta["layout"]["name"] == name
    enc = codec.Encoded(planes["q:words"], _index(planes["q:index"], meta, INTEGERS[name], data.size, CodecConfig()),
                        np.frombuffer(__import__("zstandard").decompress(planes["q:tables"].tobytes()), np.uint16),
                        INTEGERS[name], data.size, CodecConfig())
    assert np.array_equal(codec.decode(enc), data)
    counts = np.bincount(data, minlength=256) / data.size
    entropy_bytes = -(counts[counts > 0] * np.log2(counts[counts > 0])).sum() / 8 * data.size
    stored = sum(v.nbytes for v in planes.values())
    assert stored < 0.8 * data.size and stored < 1.05 * entropy_bytes


def test_compresses_gaussian_bf16_near_entropy():
    """A real ratio bound: normal weights in bf16 code within 1% of their order-0 16-bit entropy."""
    rng = np.random.default_rng(1)
    v = torch.from_numpy(rng.normal(0, 0.02, 1 << 18).astype(np.float32)).to(torch.bfloat16)
    bits = v.view(torch.int16).numpy().view(np.uint16)
    enc = codec.encode(bits, LAYOUTS["BF16"])
    counts = np.bincount(bits, minlength=1 << 16).astype(np.float64)
    p = counts[counts > 0] / bits.size
    h16 = float(-(p * np.log2(p)).sum()) / 16
    ratio = enc.nbytes / bits.nbytes
    assert ratio < h16 + 0.01, (ratio, h16)
    assert np.array_equal(codec.decode(enc), bits)


def test_all_equal_costs_nothing_per_value():
    v = np.full(1 << 16, 0x3F80, np.uint16)
    enc = codec.encode(v, LAYOUTS["BF16"], SMALL)
    assert enc.words.size == 0 and enc.mode_counts()["const"] == enc.index.shape[0] * 2
    assert np.array_equal(codec.decode(enc), v)


def test_random_bits_stay_raw_with_small_overhead():
    v = np.random.default_rng(2).integers(0, 2**32, 1 << 15, dtype=np.uint32)
    enc = codec.encode(v, LAYOUTS["F32"], SMALL)
    assert enc.words.nbytes <= v.nbytes * 1.001
    assert np.array_equal(codec.decode(enc), v)


def test_normalize_freqs_sums_and_keeps_every_symbol():
    rng = np.random.default_rng(3)
    for _ in range(50):
        counts = rng.integers(0, 3, 4096) * rng.integers(1, 10**6, 4096)
        counts[rng.integers(0, 4096)] += 1
        f = rans.normalize_freqs(counts, 14)
        assert f.sum() == 1 << 14 and np.all((f > 0) == (counts > 0))


def test_decoder_rejects_corrupt_stream():
    rng = np.random.default_rng(4)
    v = np.minimum(rng.geometric(0.3, 5000), 4095).astype(np.uint16) << 4
    enc = codec.encode(v, LAYOUTS["BF16"], SMALL)
    enc.words[len(enc.words) // 2] ^= 0x10
    with pytest.raises(codec.CodecError, match=r"chunk \d+ field 0"):
        codec.decode(enc)

"""Format version 2: every decoder path bit-exact (each instruction set forced, the numba fallback, no
compiler at all), both modes, threads, grid-aware coding, the drop-in save_file / load_file, version-1
files still reading, and a fuzzed reader that always names the tensor."""
from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file as st_save_file

from leanlm.compress.lossless import cext, codec, grid
from leanlm.compress.lossless import format as fmt
from leanlm.compress.lossless.codec import CodecConfig
from leanlm.compress.lossless.container import ContainerReader, TensorSpan, encode_tensor, write_container
from leanlm.compress.lossless.layout import INTEGERS, LAYOUTS_V2
from leanlm.lossless import load_file, save_file

ISAS = ["scalar", "avx2", "avx512"]
CODERS = ["rans32", "huff"]


def bits(t: torch.Tensor) -> np.ndarray:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()]
    uint = {1: np.uint8, 2: np.uint16, 4: np.uint32}[t.element_size()]
    return t.contiguous().view(ints).numpy().view(uint).ravel()


def sample(name: str, n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 0.05
    x[::97] = torch.tensor([0.0, -0.0, float("inf"), float("nan"), 1e-30, -3e4])[torch.arange(x[::97].numel()) % 6]
    dt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[name]
    return bits(x.to(dt))


def mode_of(coder: str) -> str:
    return "fast" if coder == "huff" else "max"


@pytest.fixture(autouse=True)
def _fresh_env(monkeypatch):
    monkeypatch.delenv("LEANLM_NO_CEXT", raising=False)
    monkeypatch.delenv("LEANLM_LOSSLESS_ISA", raising=False)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("name", ["BF16", "F16", "F32"])
def test_every_instruction_set_is_bit_exact(isa, coder, name):
    if cext.library() is None:
        pytest.skip("no C compiler here: the compiled decoder is not built")
    if not cext.supports(isa):
        pytest.skip(f"this CPU lacks {isa} (best: {cext.cpu_isa()})")
    for n, chunk in [(1, 1024), (31, 1024), (5000, 1024), (70001, 1 << 14)]:
        v = sample(name, n, n)
        enc = codec.encode(v, LAYOUTS_V2[mode_of(coder)][name], CodecConfig(chunk_values=chunk, coder=coder))
        assert np.array_equal(codec.decode(enc, isa=isa), v), (isa, coder, name, n)
        assert np.array_equal(codec.decode(enc, isa=isa, threads=2), v)


def test_forcing_an_instruction_set_the_cpu_lacks_is_an_error():
    if cext.library() is None or cext.supports("avx512"):
        pytest.skip("needs the compiled decoder on a CPU without AVX-512")
    enc = codec.encode(sample("BF16", 5000, 1), LAYOUTS_V2["max"]["BF16"], CodecConfig(chunk_values=1024))
    with pytest.raises(cext.ExtensionUnavailable, match="avx512"):
        codec.decode(enc, isa="avx512")


@pytest.mark.parametrize("coder", CODERS)
def test_numba_fallback_decodes_the_same_format(coder, monkeypatch):
    v = sample("BF16", 20000, 3)
    enc = codec.encode(v, LAYOUTS_V2[mode_of(coder)]["BF16"], CodecConfig(chunk_values=4096, coder=coder))
    compiled = codec.decode(enc)
    monkeypatch.setenv("LEANLM_NO_CEXT", "1")
    assert cext.library() is None
    assert np.array_equal(codec.decode(enc), v) and np.array_equal(compiled, v)


def test_no_compiler_falls_back_to_numba(monkeypatch, tmp_path):
    """Without any C compiler the build is refused with a clear reason and decoding still works."""
    monkeypatch.setattr(cext, "compiler", lambda: None)
    monkeypatch.setenv("LEANLM_CACHE", str(tmp_path))
    with pytest.raises(cext.ExtensionUnavailable, match="compiler"):
        cext.build()
    cext._load.cache_clear()
    try:
        assert cext.library() is None
        v = sample("F32", 9000, 4)
        enc = codec.encode(v, LAYOUTS_V2["max"]["F32"], CodecConfig(chunk_values=2048))
        assert np.array_equal(codec.decode(enc), v)
    finally:
        cext._load.cache_clear()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 6000), seed=st.integers(0, 2**31), coder=st.sampled_from(CODERS),
       spread=st.sampled_from([1e-4, 0.02, 3.0, 1e4]))
def test_property_both_modes_bit_exact(n, seed, coder, spread):
    rng = np.random.default_rng(seed)
    v = bits(torch.from_numpy((rng.standard_t(3, n) * spread).astype(np.float32)).to(torch.bfloat16))
    enc = codec.encode(v, LAYOUTS_V2[mode_of(coder)]["BF16"], CodecConfig(chunk_values=1024, coder=coder))
    assert np.array_equal(codec.decode(enc), v)


def test_modes_ratio_on_gaussian_bf16():
    v = bits((torch.randn(1 << 19, generator=torch.Generator().manual_seed(5)) * 0.02).to(torch.bfloat16))
    sizes = {}
    for coder in CODERS:
        enc = codec.encode(v, LAYOUTS_V2[mode_of(coder)]["BF16"], CodecConfig(coder=coder))
        sizes[coder] = enc.nbytes / v.nbytes
    assert sizes["rans32"] < 0.665 and sizes["huff"] < 0.675 and sizes["rans32"] < sizes["huff"]


# --------------------------------------------------------------------------------- grid-aware coding
def q4_1(x: np.ndarray) -> np.ndarray:
    """ggml's reference Q4_1 round trip (min/max per 32-block, fp16 d and m), dequantised as gguf does."""
    b = x.reshape(-1, 32).astype(np.float32)
    lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
    d = (hi - lo) / 15
    idv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)
    q = np.minimum(15, ((b - lo) * idv + 0.5).astype(np.int32)).astype(np.float32)
    d16, m16 = d.astype(np.float16).astype(np.float32), lo.astype(np.float16).astype(np.float32)
    return (d16 * q + m16).reshape(-1)


def q8_0(x: np.ndarray) -> np.ndarray:
    b = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(b).max(1, keepdims=True) / 127
    q = np.round(b / np.where(d > 0, d, 1)).astype(np.int8).astype(np.float32)   # int8 codes: no -0
    return (q * d.astype(np.float16).astype(np.float32)).reshape(-1)


@pytest.mark.parametrize("kind, fn, limit", [("q4_1", q4_1, 0.40), ("q8_0", q8_0, 0.62)])
def test_grid_tensors_are_stored_as_codes_bit_exact(kind, fn, limit):
    x = np.random.default_rng(6).normal(0, 0.02, 64 * 1024).astype(np.float32)
    v = bits(torch.from_numpy(fn(x)).to(torch.bfloat16))
    v[5 * 32: 5 * 32 + 3] ^= 1                      # one block off the grid: stored as an exception
    data = v.view(np.uint8)
    meta, planes = encode_tensor(TensorSpan("w", "BF16", (v.size,), 0, data.size), data,
                                 CodecConfig(chunk_values=1 << 14))
    assert meta["codec"] == "grid" and meta["grid"] == kind
    assert planes["w:exc_blocks"].tolist() == [5]
    assert sum(p.nbytes for p in planes.values()) < limit * data.size
    g = grid.detect(v)
    assert g is not None and np.array_equal(grid.reconstruct(g), v)


def test_non_grid_tensor_costs_nothing_extra():
    v = bits((torch.randn(1 << 16, generator=torch.Generator().manual_seed(7)) * 0.02).to(torch.bfloat16))
    data = v.view(np.uint8)
    span = TensorSpan("w", "BF16", (v.size,), 0, data.size)
    with_grid = encode_tensor(span, data, CodecConfig(chunk_values=1 << 14))
    without = encode_tensor(span, data, CodecConfig(chunk_values=1 << 14), grids=False)
    assert with_grid[0]["codec"] == "rans" and grid.detect(v) is None
    assert sum(p.nbytes for p in with_grid[1].values()) == sum(p.nbytes for p in without[1].values())


# --------------------------------------------------------------------------------- save_file / load_file
def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    x = np.random.default_rng(8).normal(0, 0.02, 32 * 512).astype(np.float32)
    return {"a.weight": (torch.randn(300, 70, generator=g) * 0.02).to(torch.bfloat16),
            "b.weight": torch.randn(5000, generator=g), "c.half": torch.randn(33, generator=g).half(),
            "d.ids": torch.arange(11), "e.empty": torch.zeros(0, 3),
            "f.grid": torch.from_numpy(q4_1(x)).to(torch.bfloat16).reshape(64, 256)}


@pytest.mark.parametrize("mode", ["max", "fast"])
def test_save_file_load_file_round_trip(tmp_path, mode):
    t = tensors()
    stats = save_file(t, tmp_path / "m.safetensors", mode=mode)
    assert stats["codecs"].get("grid") == 1
    back = load_file(tmp_path / "m.safetensors", threads=2)
    assert list(back) == sorted(t, key=lambda k: list(t).index(k)) or set(back) == set(t)
    for k, v in t.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        if v.numel():
            assert torch.equal(back[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k
    with pytest.raises(fmt.FormatError, match="directory"):
        load_file(tmp_path)


def _doc(blob: bytes) -> tuple[int, dict, dict]:
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    doc = json.loads(header["__metadata__"][fmt.CONTAINER_KEY])
    return hlen, header, doc


def _rewrite(blob: bytes, header: dict, doc: dict, hlen: int) -> bytes:
    header["__metadata__"][fmt.CONTAINER_KEY] = json.dumps(doc)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + blob[8 + hlen:]


def test_version_1_files_still_read_and_unknown_versions_are_named(tmp_path):
    src = tmp_path / "orig.safetensors"
    t = {k: v for k, v in tensors().items() if k != "f.grid"}
    st_save_file(t, str(src))
    c = tmp_path / "v2.safetensors"
    write_container(src, c, "orig.safetensors", CodecConfig(chunk_values=1024, prob_bits=14, coder="rans64"))
    blob = c.read_bytes()
    hlen, header, doc = _doc(blob)
    doc.update(json.loads(zstandard.decompress(base64.b64decode(doc.pop("zdoc")))))
    doc["format_version"] = 1                  # exactly what version 1 wrote: a plain document
    v1 = tmp_path / "v1.safetensors"
    v1.write_bytes(_rewrite(blob, header, dict(doc), hlen))
    got = load_file(v1)
    assert all(torch.equal(got[k].view(torch.uint8), v.view(torch.uint8)) for k, v in t.items() if v.numel())
    doc["format_version"] = 3
    v3 = tmp_path / "v3.safetensors"
    v3.write_bytes(_rewrite(blob, header, doc, hlen))
    with pytest.raises(fmt.FormatError, match="format version 3"):
        ContainerReader(v3)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> tuple[Path, dict]:
    t = {k: v for k, v in tensors().items() if v.numel()}
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    save_file(t, path, mode="max")
    fast = path.with_name("g.safetensors")
    save_file(t, fast, mode="fast")
    return path, t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_planes_never_give_wrong_weights_and_name_the_tensor(fuzz_file, tmp_path, data):
    path, t = fuzz_file
    path = data.draw(st.sampled_from([path, path.with_name("g.safetensors")]))
    blob = bytearray(path.read_bytes())
    hlen, header, _ = _doc(bytes(blob))
    planes = sorted((k, v["data_offsets"]) for k, v in header.items() if k != "__metadata__" and
                    v["data_offsets"][1] > v["data_offsets"][0])
    key, (b, e) = data.draw(st.sampled_from(planes))
    for _ in range(data.draw(st.integers(1, 4))):
        at = 8 + hlen + data.draw(st.integers(b, e - 1))
        blob[at] ^= 1 << data.draw(st.integers(0, 7))
    p = tmp_path / "mut.safetensors"
    p.write_bytes(bytes(blob))
    owner = key.split(":")[0]
    try:
        got = load_file(p, threads=data.draw(st.sampled_from([1, 2])))
    except fmt.FormatError as err:
        assert f"'{owner}'" in str(err), (key, str(err))
        return
    for k, v in t.items():   # a flip the checks cannot see must leave the weights exact (e.g. padding bits)
        assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), (key, k)


def test_integer_codes_use_the_compiled_path():
    v = (np.random.default_rng(9).normal(0, 3, 50000).round().clip(-127, 127)).astype(np.int8).view(np.uint8)
    enc = codec.encode(v, INTEGERS["U8"], CodecConfig(chunk_values=1 << 14))
    assert np.array_equal(codec.decode(enc), v) and enc.nbytes < 0.55 * v.nbytes   # entropy ~4.1 bits


def _fused_isa() -> str:
    """The widest instruction set with a fused bf16 decoder here (AVX-512: also lock-step pairs)."""
    if cext.library() is None or not cext.supports("avx2"):
        pytest.skip("the fused bf16 decoder needs the compiled decoder and AVX2 or AVX-512")
    return "avx512" if cext.supports("avx512") else "avx2"


C = 1 << 16   # chunks large enough for max mode to code its 12-bit symbols


@pytest.mark.parametrize("n", [4 * C, 5 * C + 77, 3 * C + 31])
def test_bf16_lock_step_pairs_match_the_scalar_decoder(n):
    """Neighbouring max-mode chunks decode two at a time (and a last odd or partial chunk alone): the same
    values as the scalar decoder, one thread or two."""
    isa = _fused_isa()
    v = sample("BF16", n, n)
    enc = codec.encode(v, LAYOUTS_V2["max"]["BF16"], CodecConfig(chunk_values=C))
    assert (enc.index[:-1, 0, 0] == codec.RANS32).all()
    assert np.array_equal(codec.decode(enc, isa="scalar"), v)
    for fused in {isa, "avx2"}:
        assert np.array_equal(codec.decode(enc, isa=fused), v)
        assert np.array_equal(codec.decode(enc, isa=fused, threads=2), v)


@pytest.mark.parametrize("pb", [10, 12, 15])
def test_bf16_fused_tables_at_every_precision(pb):
    """The fused table is filled in whole vectors that run past each symbol's slots (and past the last slot
    into the scratch's slack): at 2**10 slots every chunk fits the one-lookup table, at 2**15 the table fills
    its whole scratch; pairs and single chunks bit-exact on each fused instruction set."""
    isa = _fused_isa()
    v = sample("BF16", 3 * C + 32 * 5 + 3, pb)
    enc = codec.encode(v, LAYOUTS_V2["max"]["BF16"], CodecConfig(chunk_values=C, prob_bits=pb))
    assert (enc.index[:-1, 0, 0] == codec.RANS32).all()
    for fused in {isa, "avx2"}:
        assert np.array_equal(codec.decode(enc, isa=fused), v), (fused, pb)
        assert np.array_equal(codec.decode(enc, isa=fused, threads=2), v), (fused, pb)


@pytest.mark.parametrize("n", [4 * C, 3 * C + 77])
def test_fp16_fused_path_matches_the_scalar_decoder(n):
    """fp16 max chunks (10-bit symbols, a 4-bit and a 2-bit raw field) take the fused AVX-512 path, in
    lock-step pairs and alone (odd and partial last chunks): the same values as the scalar decoder, and a
    corrupt chunk is still named."""
    if cext.library() is None or not cext.supports("avx512"):
        pytest.skip("the fused fp16 decoder needs the compiled decoder and AVX-512")
    v = sample("F16", n, n)
    enc = codec.encode(v, LAYOUTS_V2["max"]["F16"], CodecConfig(chunk_values=C))
    assert (enc.index[:-1, 0, 0] == codec.RANS32).all() and (enc.index[:-1, 1:, 0] == codec.RAW).all()
    assert np.array_equal(codec.decode(enc, isa="scalar"), v)
    for threads in (1, 2):
        assert np.array_equal(codec.decode(enc, isa="avx512", threads=threads), v)
    words = enc.words.copy()
    words[enc.index[1, 0, 1] + enc.index[1, 0, 2] // 2] ^= 0x5A5A5A5A
    bad = codec.Encoded(words, enc.index, enc.tables, enc.layout, enc.count, enc.config)
    with pytest.raises(codec.CodecError, match="chunk 1 field 0"):
        codec.decode(bad, isa="avx512")


def test_bf16_chunk_with_a_dominant_symbol_takes_the_general_path():
    """A symbol of more than 1/16 of a chunk (here a third of the values are zero) does not fit the one-lookup
    table; that chunk decodes on the general path, its neighbours on the fused one, all bit-exact."""
    isa = _fused_isa()
    v = sample("BF16", 3 * C, 9)
    v[C:C + C // 3] = 0
    enc = codec.encode(v, LAYOUTS_V2["max"]["BF16"], CodecConfig(chunk_values=C))
    aux = enc.index[1, 0, 3]
    freq = enc.tables[aux + 2:aux + 2 + enc.tables[aux + 1]]
    assert freq.max() >= 1024 and (enc.index[:, 0, 0] == codec.RANS32).all()
    assert np.array_equal(codec.decode(enc, isa=isa), v) and np.array_equal(codec.decode(enc, isa="avx2"), v)


def test_corrupt_second_chunk_of_a_pair_is_named():
    _fused_isa()
    v = sample("BF16", 4 * C, 11)
    enc = codec.encode(v, LAYOUTS_V2["max"]["BF16"], CodecConfig(chunk_values=C))
    words = enc.words.copy()
    off, cnt = enc.index[1, 0, 1], enc.index[1, 0, 2]
    words[off + cnt // 2] ^= 0x5A5A5A5A
    bad = codec.Encoded(words, enc.index, enc.tables, enc.layout, enc.count, enc.config)
    with pytest.raises(codec.CodecError, match="chunk 1 field 0"):
        codec.decode(bad)


def test_decode_many_equals_decode_and_names_the_bad_item():
    """One job table over several arrays of different sizes, layouts and coders, 1 or 2 threads."""
    arrays = [sample("BF16", 3 * C + 5, 1), sample("F32", 5000, 2), sample("BF16", 300, 3), sample("F16", 7000, 4),
              sample("BF16", C, 5)]
    encs = [codec.encode(v, LAYOUTS_V2[mode][dt], CodecConfig(chunk_values=C if dt == "BF16" else 2048, coder=coder))
            for v, dt, mode, coder in zip(arrays, ["BF16", "F32", "BF16", "F16", "BF16"],
                                          ["max", "fast", "fast", "max", "max"],
                                          ["rans32", "huff", "huff", "rans32", "rans32"])]
    for threads in (1, 2):
        outs = [np.empty_like(v) for v in arrays]
        codec.decode_many(list(zip(encs, outs)), threads=threads)
        assert all(np.array_equal(o, v) for o, v in zip(outs, arrays))
    last = encs[4]
    assert last.index[0, 0, 0] == codec.RANS32
    words = last.words.copy()
    words[last.index[0, 0, 1] + last.index[0, 0, 2] // 2] ^= 0x5A5A5A5A
    encs[4] = codec.Encoded(words, last.index, last.tables, last.layout, last.count, last.config)
    with pytest.raises(codec.ItemError, match="chunk 0 field 0") as e:
        codec.decode_many([(enc, np.empty_like(v)) for enc, v in zip(encs, arrays)])
    assert e.value.item == 4


def test_job_blocks_cover_every_row_once_on_even_cuts():
    """Threads take blocks of whole jobs from a counter shared in C: the blocks tile the table, start on even
    rows (lock-step pairs stay together) and hold about the asked number of values."""
    rng = np.random.default_rng(0)
    jobs = np.zeros((301, codec.JOB_FIELDS), np.int64)
    jobs[:, codec.N] = rng.choice([384, 1536, 1 << 16, 1 << 18], size=301)
    cuts = codec.job_blocks(jobs, 1 << 19)
    assert cuts[0] == 0 and cuts[-1] == 301 and (np.diff(cuts) > 0).all()
    assert (cuts[1:-1] % 2 == 0).all()
    sizes = np.add.reduceat(jobs[:, codec.N], cuts[:-1])
    assert sizes[:-1].max() <= (1 << 19) + 2 * (1 << 18) and np.median(sizes) >= 1 << 18


def test_two_threads_decode_many_blocks_and_name_a_bad_chunk_in_either():
    """Many blocks, taken by two threads in turn: bit-exact, and a corrupt chunk in any block is named."""
    v = sample("BF16", 9 * C + 123, 21)
    enc = codec.encode(v, LAYOUTS_V2["max"]["BF16"], CodecConfig(chunk_values=C))
    old = codec.BLOCK_VALUES
    try:
        codec.BLOCK_VALUES = C
        assert np.array_equal(codec.decode(enc, threads=2), v)
        for bad_chunk in (1, 8):
            words = enc.words.copy()
            words[enc.index[bad_chunk, 0, 1] + enc.index[bad_chunk, 0, 2] // 2] ^= 0x5A5A5A5A
            bad = codec.Encoded(words, enc.index, enc.tables, enc.layout, enc.count, enc.config)
            with pytest.raises(codec.CodecError, match=f"chunk {bad_chunk} field 0"):
                codec.decode(bad, threads=2)
    finally:
        codec.BLOCK_VALUES = old


def test_wide_huffman_alphabet_is_bit_exact():
    """Huffman symbols wider than 8 bits take the 16-bit lookup entries (no built-in layout makes them)."""
    from leanlm.compress.lossless.layout import Layout

    v = sample("BF16", 20000, 6)
    wide = Layout("BF16", 16, (((6, 10),), ((0, 6),)))
    enc = codec.encode(v, wide, CodecConfig(chunk_values=8192, coder="huff"))
    assert enc.index[0, 0, 0] == codec.HUFF
    assert np.array_equal(codec.decode(enc), v)
    assert np.array_equal(codec.decode(enc, isa="scalar"), v)

"""The container reader under attack: truncation, bit flips and tampered headers give clear errors naming
the tensor (or the file), never wrong weights, never a crash, never a huge allocation."""
from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from safetensors.torch import save_file

from leanlm.compress.lossless import format as fmt
from leanlm.compress.lossless.codec import CodecConfig
from leanlm.compress.lossless.container import ContainerReader, parse_safetensors, write_container

CFG = CodecConfig(chunk_values=1024)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": (torch.randn(40, 64, generator=g) * 0.02).to(torch.bfloat16),
        "b.weight": torch.randn(3000, generator=g),
        "c.bias": torch.zeros(17, dtype=torch.float16),
        "d.ids": torch.arange(11, dtype=torch.int64),
        "e.empty": torch.zeros(0, 3),
    }
    path = tmp_path_factory.mktemp("orig") / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def container(original, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("c") / "model.lossless.safetensors"
    write_container(original, dst, "model.safetensors", CFG)
    return dst


def rebuild(path: Path) -> bytes:
    out = bytearray()

    class Sink:
        def write(self, b):
            out.extend(bytes(b))

    ContainerReader(path).rebuild(Sink())
    return bytes(out)


def test_rebuilds_file_byte_identical(original, container):
    assert rebuild(container) == original.read_bytes()
    r = ContainerReader(container)
    assert r.tensors["d.ids"]["codec"] == "raw" and r.tensors["e.empty"]["codec"] == "empty"
    assert r.tensors["a.weight"]["codec"] == "rans"


def test_parse_refuses_gaps(tmp_path, original):
    data = bytearray(original.read_bytes()) + b"\0"          # trailing garbage: not tiled exactly
    (tmp_path / "x.safetensors").write_bytes(bytes(data))
    assert parse_safetensors(tmp_path / "x.safetensors") is None


def _outcome(path: Path, expected: bytes) -> str:
    """'error' when reading fails with our error type, 'same' when it rebuilds the exact original bytes."""
    try:
        got = rebuild(path)
    except fmt.FormatError as e:
        assert str(e)  # a message, never empty
        return "error"
    assert got == expected, "a corrupted container decoded to different bytes without an error"
    return "same"


def test_truncation_is_detected(tmp_path, original, container):
    blob, expected = container.read_bytes(), original.read_bytes()
    for cut in sorted({0, 4, 8, 9, 100, len(blob) // 3, len(blob) // 2, len(blob) - 100, len(blob) - 1}):
        p = tmp_path / f"t{cut}.safetensors"
        p.write_bytes(blob[:cut])
        assert _outcome(p, expected) == "error", cut


def test_bit_flips_never_give_wrong_weights(tmp_path, original, container):
    blob, expected = container.read_bytes(), original.read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    rng = np.random.default_rng(0)
    outcomes = {"error": 0, "same": 0}
    data_start = 8 + hlen
    for trial in range(150):
        b = bytearray(blob)
        # two thirds in the data section (planes), one third anywhere (header included)
        lo = data_start if trial % 3 else 0
        pos = int(rng.integers(lo, len(b)))
        b[pos] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / "flip.safetensors"
        p.write_bytes(bytes(b))
        outcomes[_outcome(p, expected)] += 1
    assert outcomes["error"] > 100   # nearly every flip is caught; the rest change nothing that matters


def test_bit_flip_error_names_the_tensor(tmp_path, original, container):
    blob = bytearray(container.read_bytes())
    r = ContainerReader(container)
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    begin, end = header["b.weight:words"]["data_offsets"]
    blob[8 + hlen + (begin + end) // 2] ^= 0x40
    p = tmp_path / "named.safetensors"
    p.write_bytes(bytes(blob))
    with pytest.raises(fmt.FormatError, match="b.weight"):
        rebuild(p)
    assert r.tensors  # the untouched original still reads


def _tamper(container: Path, dst: Path, edit) -> Path:
    """Rewrite the container metadata through ``edit(doc)``, keeping the planes."""
    blob = container.read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    doc = json.loads(header["__metadata__"][fmt.CONTAINER_KEY])
    if "zdoc" in doc:   # version 2 stores the document compressed; the reader also takes it plain
        doc.update(json.loads(zstandard.decompress(base64.b64decode(doc.pop("zdoc")))))
    edit(doc)
    header["__metadata__"][fmt.CONTAINER_KEY] = json.dumps(doc)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + hlen:])
    return dst


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["tensors"]["b.weight"].update(shape=[2**40]), "b.weight"),
    (lambda d: d["tensors"]["b.weight"].update(shape=[1 << 18], offsets=[0, 1 << 20]), "b.weight"),
    (lambda d: d["tensors"]["b.weight"].update(shape=[-3]), "b.weight"),
    (lambda d: d["tensors"]["a.weight"].update(sha256="0" * 64), "a.weight"),
    (lambda d: d["tensors"]["a.weight"].update(chunk_values=1 << 30), "a.weight"),
    (lambda d: d["tensors"]["a.weight"].update(prob_bits=40), "a.weight"),
    (lambda d: d["tensors"]["a.weight"].update(table_words=1 << 40), "a.weight"),
    (lambda d: d["tensors"]["a.weight"]["layout"].update(fields=[[[0, 16]]]), "a.weight"),
    (lambda d: d["tensors"]["a.weight"]["layout"].update(fields=[[[0, 30]]], width=32), "a.weight"),
    (lambda d: d["tensors"]["d.ids"].update(dtype="Q99"), "d.ids"),
    (lambda d: d.update(format_version=99), "format version"),
    (lambda d: d.update(magic="nope"), "magic"),
    (lambda d: d.update(original_header="!!"), "header"),
])
def test_tampered_metadata_is_refused(tmp_path, container, edit, match):
    p = _tamper(container, tmp_path / "tampered.safetensors", edit)
    with pytest.raises(fmt.FormatError, match=match):
        rebuild(p)


def test_lying_index_is_refused(tmp_path, container):
    """Offsets in the (binary, zstd-compressed) chunk index that point outside the words are caught before
    decoding: the container is rewritten with a well-formed index whose word count is a lie."""
    import zstandard
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(container), framework="np") as f:
        planes, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    raw = np.frombuffer(zstandard.decompress(planes["b.weight:index"].tobytes()), np.int64).copy()
    raw[2] = 1 << 40                       # chunk 0, field 0, word count
    planes["b.weight:index"] = np.frombuffer(zstandard.ZstdCompressor().compress(raw.tobytes()), np.uint8)
    p = tmp_path / "index.safetensors"
    save_file(planes, str(p), metadata=metadata)
    with pytest.raises(fmt.FormatError, match="b.weight"):
        rebuild(p)


def test_corrupt_zipped_index_is_refused(tmp_path, container):
    blob = bytearray(container.read_bytes())
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    begin, end = header["b.weight:index"]["data_offsets"]
    at = 8 + hlen + (begin + end) // 2
    blob[at] ^= 0xFF
    p = tmp_path / "index.safetensors"
    p.write_bytes(bytes(blob))
    with pytest.raises(fmt.FormatError, match="b.weight"):
        rebuild(p)

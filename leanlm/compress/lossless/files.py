"""Drop-in replacements for ``safetensors.torch.save_file`` / ``load_file`` over one lossless container.

``save_file(tensors, path)`` writes a single container file (an ordinary safetensors file holding the coded
planes, see ``format``); ``load_file(path)`` decodes every tensor straight into its destination tensor's
memory, checks every sha256 and returns the dict, so ``from leanlm.lossless import load_file`` replaces
``from safetensors.torch import load_file``. Every tensor is checked (CRC-32 by default, sha256 on request).
Tensors decode on ``threads`` threads (the compiled decoder
releases the GIL): every chunk of every float-coded tensor in one job table, whose blocks the threads take in
turn (``codec.run_jobs``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from .container import ContainerError, ContainerReader, write_container
from .hooks import TORCH_DTYPES
from .store import LosslessConfig

def save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None,
              mode: str = "max", threads: int | None = None) -> dict:
    """Write ``tensors`` losslessly coded to ``path`` (atomically). Returns size statistics."""
    cfg = LosslessConfig(mode=mode, threads=threads or 0)
    path = Path(path)
    blob = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        del blob
        return write_container(Path(tmp), path, path.name, cfg.codec(), cfg.n_threads(), grids=cfg.grids)
    finally:
        os.unlink(tmp)


def _empty(meta: dict) -> torch.Tensor:
    return torch.empty(meta["shape"], dtype=TORCH_DTYPES[meta["dtype"]])


def load_file(path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
              verify: bool | str = "crc32") -> dict[str, torch.Tensor]:
    """Every tensor of the container at ``path``, decoded and checksummed, on ``device``. ``verify``:
    "crc32" (default: each tensor's CRC-32, sha256 for version-1 files), True (sha256, as ``leanlm verify``
    and ``decompress`` do) or False (only the decoders' own stream checks)."""
    path = Path(path)
    if path.is_dir():
        raise ContainerError(f"{path} is a directory; load_file reads one container file (for a compressed "
                             f"model directory use leanlm.load or `leanlm decompress`)")
    reader = ContainerReader(path)
    threads = threads or LosslessConfig().n_threads()
    out = {name: _empty(reader.tensors[name]) for name in reader.order}
    reader.decode_all({n: t.view(-1).view(torch.uint8).numpy() for n, t in out.items() if t.numel()},
                      threads=threads, verify=verify)
    if device != "cpu":
        out = {k: v.to(device) for k, v in out.items()}
    return out

"""``leanlm export SRC --to gguf``: write a GGUF file llama.cpp loads, quantised by leanlm's quantiser.

The recipe, top to bottom (``export_gguf``):

1. load the model in float32 and rename its tensors the GGUF way (``gguf_source``);
2. plan each tensor's type exactly as llama-quantize would for ``--type`` (``gguf_types``), or, for
   ``--bpw B``, quantise every matrix in every type its rows allow and pick the mix that meets the
   whole-file budget with the least estimated loss (Fisher-weighted rounding error; ``gguf_mix``);
3. calibrate: the second moment of every matrix's inputs on the calibration text (``gguf_calib``);
4. quantise each matrix with importance-weighted scale search (``method="rtn"``, the default) or that
   plus GPTQ error feedback (``"gptq"``) in its block format (``gguf_quant``), pack the blocks in llama.cpp's layout (``kquants``; F16/BF16 by gguf-py);
   a block whose values already lie on the type's grid is coded on that grid, found from the values and
   verified bit for bit (``keep_grid``, ``gguf_grid``: exact, where a scale search only comes close);
   a tensor whose values equal the reference GGUF's and whose type is the same is copied block for block
   (``reuse_source``: exact recovery of the source grid from its file; off for like-for-like races);
5. write metadata (copied from the reference GGUF, else built from the HF config) and tensors atomically.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from tqdm import tqdm

from . import gguf_quant as gq
from .gguf_grid import grid_blocks
from .gguf_source import (copy_metadata, dequantised, gguf_tensors, layout_for, load_float_model,
                          reference_gguf, source_blocks)
from . import gguf_mix as mix
from .gguf_meta import write_hf_metadata
from .gguf_types import CATEGORIES, FILE_TYPES, ModelShape, plan_types, quantisable, tensor_bytes
from .gguf_types import category as tensor_category
from .kquants import FORMATS, pack

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GGUFExportConfig:
    qtype: str = "Q4_K_M"           # llama-quantize file type name (ignored with bpw)
    bpw: float | None = None        # whole-file bits per weight (per-tensor mix chosen by sensitivity)
    fisher_windows: int = 64        # bpw: windows of the calibration text the sensitivity is measured on
    fisher_len: int = 128           # bpw: tokens per window (one backward pass each)
    calib: str = "mix"              # calibration text: corpus name or file path
    calib_windows: int = 32
    seq_len: int = 512
    # rtn: importance-weighted scale search, round to nearest; gptq: plus GPTQ error feedback. rtn is the
    # default: on SmolLM2 Q4_0 it beats llama-quantize + imatrix and GPTQ loses to both
    # (benchmarks/results/export/gguf_ablate_q4_0.json)
    method: str = "rtn"
    # gptq: tensor categories (gguf_types.category: attn_v, ffn_down, ...) rounded without error feedback.
    # GPTQ overfits the calibration text where these read their inputs (measured on SmolLM2 Q4_K_M:
    # gptq everywhere 15.947 / 20.936, rtn 16.191 / 20.575, gptq but rtn for attn_v + ffn_down 15.917 /
    # 20.555, pydoc / GPL-3; benchmarks/EXPORT.md)
    rtn_for: tuple[str, ...] = ()
    damp: float = 0.01
    params_when_reached: bool = True  # GPTQ: each 32-block's scale searched when the sweep reaches it
    llama_weighting: bool = False     # importance diag(H) * sqrt(sigma2 + w^2) (llama.cpp's) instead of diag(H)
    # blocks whose values lie exactly on the type's grid (a model decoded from a block format) are coded on
    # it, found from the values, not from the source file (gguf_grid); others go to the quantiser. On
    # Gemma 3 (a decoded Q4_K_M) all 127 matrices of its Q4_K_M plan are recovered whole
    # (benchmarks/results/export/gguf_grid_blocks.json)
    keep_grid: bool = True
    reuse_source: bool = True
    metadata_from: str | None = None  # a GGUF to copy metadata from (default: the source's own)

    def __post_init__(self):
        if self.bpw is None and self.qtype not in FILE_TYPES:
            raise ValueError(f"unsupported GGUF type '{self.qtype}'; choose one of {sorted(FILE_TYPES)}")
        if self.bpw is not None and not (0 < self.bpw <= 32 and np.isfinite(self.bpw)):
            raise ValueError(f"--bpw must be a number of bits per weight in (0, 32], not {self.bpw}")
        if self.fisher_windows < 1 or self.fisher_len < 8:
            raise ValueError("fisher_windows must be >= 1 and fisher_len >= 8")
        if self.method not in ("gptq", "rtn"):
            raise ValueError(f"method must be gptq or rtn, not '{self.method}'")
        bad = [c for c in self.rtn_for if c not in CATEGORIES]
        if bad:
            raise ValueError(f"rtn_for names unknown tensor categories {bad}; choose from {list(CATEGORIES)}")


def model_shape(model) -> ModelShape:
    c = model.config
    return ModelShape(c.num_hidden_layers, c.num_attention_heads, getattr(c, "num_key_value_heads", None)
                      or c.num_attention_heads, bool(getattr(c, "tie_word_embeddings", False)))


def encode_float(arr: np.ndarray, qtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    if qtype == "F32":
        return arr.astype(np.float32), None
    if qtype == "F16":
        return arr.astype(np.float16), None
    return gguf.quants.quantize(arr.astype(np.float32), gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


GPTQ_MAX_ELEMENTS = 64 * 2 ** 20   # larger matrices (an embedding of 100k+ rows) are rounded without GPTQ


def rounding_method(cfg: GGUFExportConfig, name: str, shape: tuple[int, ...], H) -> str:
    """How a matrix is rounded (the one decision ``quantise_tensor`` follows and the report names)."""
    if H is None:
        return "rtn (no calibration)"
    if cfg.method != "gptq":
        return cfg.method
    if tensor_category(name) in cfg.rtn_for:
        return "rtn"
    if int(np.prod(shape)) > GPTQ_MAX_ELEMENTS:
        return "rtn (too large for GPTQ)"
    return "gptq"


def quantise_tensor(arr: np.ndarray, qtype: str, H: torch.Tensor | None, cfg: GGUFExportConfig,
                    hinv_cache: dict, name: str = "") -> tuple[np.ndarray, float, torch.Tensor, str]:
    """Packed blocks (rows, bytes), the H-weighted relative error, the dequantised matrix and how it was
    rounded (``rounding_method``; ``grid`` where every block lay on the type's grid, ``+ grid k/n``
    where some did)."""
    fmt = FORMATS[qtype]
    W = torch.from_numpy(arr)
    rows = W.shape[0]
    on = None
    if cfg.keep_grid:
        grid, on = grid_blocks(arr, qtype)
        if on.all():
            return grid.reshape(rows, -1), 0.0, W.clone(), f"grid ({on.size} blocks)"
    how = rounding_method(cfg, name, arr.shape, H)
    if how == "gptq":
        key = id(H)
        if key not in hinv_cache:
            hinv_cache.clear()   # tensors sharing an input are consecutive; keep one factor
            hinv_cache[key] = gq._hinv_factor(H, cfg.damp)
        res = gq.gptq(W, H, fmt, hinv=hinv_cache[key], params_when_reached=cfg.params_when_reached,
                      llama_weighting=cfg.llama_weighting)
    else:
        res = gq.rtn(W, fmt, gq.importance(None if H is None else torch.diag(H), W.shape[1]),
                     llama_weighting=cfg.llama_weighting)
    blocks, deq = pack(qtype, res.fields(fmt)), res.dequant
    if on is not None and on.any():
        blocks[on] = grid[on]
        exact = torch.from_numpy(np.repeat(on.reshape(rows, -1), fmt.block, axis=1))   # (rows, cols)
        deq = torch.where(exact, W, deq)
        how += f" + grid ({int(on.sum())} of {on.size} blocks)"
    ref = gq.weighted_error(W, torch.zeros_like(W), H)
    return blocks.reshape(rows, -1), gq.weighted_error(W, deq, H) / max(ref, 1e-30), deq, how


def _reusable(src: dict, name: str, qtype: str, arr: np.ndarray) -> np.ndarray | None:
    if name not in src or src[name][0] != qtype or qtype in ("F32", "F16", "BF16"):
        return None
    raw = src[name][1]
    return raw if np.array_equal(dequantised(qtype, raw).reshape(arr.shape), arr) else None


def mix_candidates(model, tok, tensors: dict[str, np.ndarray], Hs: dict[str, torch.Tensor],
                   cfg: GGUFExportConfig, src: dict | None = None) -> dict[str, list[mix.Candidate]]:
    """Every matrix quantised in every type its rows allow, each with its estimated loss cost (``gguf_mix``).
    Computed once per model and calibration; ``export_gguf(..., candidates=)`` reuses it for any budget."""
    from ..eval.corpus import load_corpus
    from .gguf_calib import calibration_windows

    ids = calibration_windows(tok, load_corpus(cfg.calib), cfg.fisher_len, cfg.fisher_windows)
    fisher = gguf_tensors(model, state=mix.fisher_diag(model, ids))
    cands: dict[str, list[mix.Candidate]] = {}
    hinv: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, arr in tqdm(tensors.items(), desc="quantise candidates", leave=False):
            types = mix.candidate_types(arr.shape) if quantisable(name, arr.shape) else ()
            row = []
            for qtype in types:
                size = tensor_bytes(qtype, arr.shape)
                raw = _reusable(src or {}, name, qtype, arr)
                if raw is not None:
                    row.append(mix.Candidate(qtype, size, 0.0, raw, 0.0, "copied from the source GGUF"))
                    continue
                H = Hs.get(name)
                blocks, rel, deq, how = quantise_tensor(arr, qtype, H, cfg, hinv, name)
                row.append(mix.Candidate(qtype, size, mix.loss_cost(fisher.get(name), arr, deq), blocks, rel, how))
            if row:
                cands[name] = row
    finally:
        torch.set_num_threads(threads)
    return cands


def _fixed_types(tensors: dict[str, np.ndarray], cands: dict[str, list[mix.Candidate]]) -> dict[str, str]:
    """The tensors a mix does not choose for: norms F32, matrices no block type fits F16."""
    return {n: ("F16" if quantisable(n, a.shape) else "F32") for n, a in tensors.items() if n not in cands}


def smallest_mix_bpw(tensors: dict[str, np.ndarray], cands: dict[str, list[mix.Candidate]]) -> float:
    """Bits per weight of the smallest file any mix of ``cands`` can be (where the rows' floor binds)."""
    fixed = sum(tensor_bytes(t, tensors[n].shape) for n, t in _fixed_types(tensors, cands).items())
    return 8 * (mix.smallest_bytes(cands) + fixed) / sum(a.size for a in tensors.values())


def _mix_plan(tensors: dict[str, np.ndarray], cands: dict[str, list[mix.Candidate]], bpw: float):
    """(chosen candidates, plan) for a whole-file budget of ``bpw`` bits per weight."""
    fixed = _fixed_types(tensors, cands)
    fixed_bytes = sum(tensor_bytes(t, tensors[n].shape) for n, t in fixed.items())
    n_weights = sum(a.size for a in tensors.values())
    narrow = sum(a.shape[-1] % 256 != 0 for n, a in tensors.items() if n in cands)
    chosen = mix.choose(cands, mix.budget_for(bpw, n_weights, fixed_bytes, cands, narrow))
    plan = mix.mix_plan(chosen, list(tensors), fixed)
    for n, t in fixed.items():
        if t == "F16":
            plan[n]["reason"] = f"row of {tensors[n].shape[-1]} fits no block type: kept F16"
    return chosen, plan


def export_gguf(spec: str, out: Path, cfg: GGUFExportConfig, force: bool = False,
                moments: dict[str, torch.Tensor] | None = None, loaded: tuple | None = None,
                candidates: dict[str, list[mix.Candidate]] | None = None) -> dict:
    """Write ``spec`` as a GGUF at ``out``. ``moments`` (from ``calibrate``), ``loaded`` (from
    ``load_float_model``) and, for ``bpw``, ``candidates`` (from ``mix_candidates``) reuse an earlier
    call's calibration, model and quantised candidates, for several exports of one model."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    t0 = time.perf_counter()
    model, tok, tensors = loaded if loaded is not None else load_float_model(spec)
    layout = layout_for(model)
    ref_path = Path(cfg.metadata_from) if cfg.metadata_from else reference_gguf(spec)
    reader = gguf.GGUFReader(str(ref_path)) if ref_path else None
    src = source_blocks(reader) if reader is not None and cfg.reuse_source else {}
    chosen: dict[str, mix.Candidate] = {}
    if cfg.bpw is not None:
        if candidates is None:
            Hs = moments if moments is not None else calibrate(model, tok, cfg)
            candidates = mix_candidates(model, tok, tensors, Hs, cfg, src)
        chosen, plan = _mix_plan(tensors, candidates, cfg.bpw)
        ftype_name, file_type = f"MIX-{cfg.bpw:g}bpw", FILE_TYPES[mix.FILE_TYPE_OF[mix.main_type(chosen)]][0]
        Hs = {}
    else:
        shapes = [(n, a.shape) for n, a in tensors.items()]
        plan = plan_types(cfg.qtype, shapes, model_shape(model), imatrix=True)
        ftype_name, file_type = cfg.qtype, FILE_TYPES[cfg.qtype][0]
        quantised = any(p["type"] in FORMATS for p in plan.values())
        Hs = (moments if moments is not None else calibrate(model, tok, cfg)) if quantised else {}
    t_calib = time.perf_counter() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, layout.gguf_arch)
        n_meta = copy_metadata(reader, writer) if reader is not None else write_hf_metadata(model, tok, writer)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        report, hinv = {}, {}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)   # thousands of small ops: one thread is faster, and kind to a shared CPU
        for name, arr in tqdm(tensors.items(), desc=f"quantise {ftype_name}", leave=False):
            qtype = plan[name]["type"]
            H = Hs.get(name)
            raw = None if name in chosen else _reusable(src, name, qtype, arr)
            rel = 0.0
            if name in chosen:
                c = chosen[name]
                data, dtype, how, rel = c.blocks, FORMATS[qtype].qtype, c.how, c.rel_error
            elif raw is not None:
                data, dtype, how = raw, gguf.GGMLQuantizationType[qtype], "copied from the source GGUF"
            elif qtype in FORMATS:
                data, rel, _, how = quantise_tensor(arr, qtype, H, cfg, hinv, name)
                dtype = FORMATS[qtype].qtype
            else:
                (data, dtype), how = encode_float(arr, qtype), "float"
            writer.add_tensor(name, data, raw_dtype=dtype)
            report[name] = {**plan[name], "shape": list(arr.shape), "how": how,
                            "bytes": tensor_bytes(qtype, arr.shape), "rel_error": rel}
            if name in chosen:
                report[name]["est_loss"] = chosen[name].cost
        torch.set_num_threads(threads)
        _write_and_replace(writer, tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    n_weights = sum(a.size for a in tensors.values())
    size = out.stat().st_size
    return {"format": "gguf", "format_version": FORMAT_VERSION, "file": str(out), "bytes": size,
            "type": ftype_name, "config": dataclasses.asdict(cfg), "source": spec,
            "metadata_from": str(ref_path) if ref_path else "hf config", "metadata_keys": n_meta,
            "bits_per_weight": round(8 * sum(r["bytes"] for r in report.values()) / n_weights, 4),
            "fallbacks": {n: r["reason"] for n, r in report.items() if "fell back" in r["reason"]},
            "grid": _grid_counts(report),
            "type_counts": _counts(report), "tensors": report,
            **({"est_loss_nats": sum(c.cost for c in chosen.values())} if chosen else {}),
            "seconds": {"calibrate": round(t_calib, 1), "total": round(time.perf_counter() - t0, 1)}}


def dequantise_gguf(src: Path, out: Path) -> dict:
    """Write ``src``'s tensors decoded to float32 (gguf-py's dequantiser), metadata copied: the model
    a quantised file means, for llama.cpp to run in float (an engine-agreement reference)."""
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        copy_metadata(reader, writer)
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for t in reader.tensors:
            shape = tuple(int(x) for x in reversed(t.shape))
            writer.add_tensor(t.name, dequantised(t.tensor_type.name, np.asarray(t.data)).reshape(shape)
                              .astype(np.float32))
        _write_and_replace(writer, tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"file": str(out), "bytes": out.stat().st_size, "tensors": len(reader.tensors)}


def _write_and_replace(writer: gguf.GGUFWriter, tmp: str, out: Path) -> None:
    """Write a finished writer's file to its temporary path, then move it over ``out`` in one step."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)


def _grid_counts(report: dict) -> dict[str, int]:
    """How many quantised tensors were coded on their values' own grid, whole or in part (``keep_grid``)."""
    hows = [r["how"] for r in report.values() if r["type"] in FORMATS]
    return {"whole": sum(h.startswith("grid") for h in hows), "part": sum("+ grid" in h for h in hows),
            "quantised": len(hows)}


def _counts(report: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in report.values():
        out[r["type"]] = out.get(r["type"], 0) + 1
    return out


def calibrate(model, tok, cfg: GGUFExportConfig) -> dict[str, torch.Tensor]:
    """Input second moments of every matrix on ``cfg.calib`` (first ``calib_windows`` windows)."""
    from ..eval.corpus import load_corpus
    from .gguf_calib import calibration_windows, input_moments

    ids = calibration_windows(tok, load_corpus(cfg.calib), cfg.seq_len, cfg.calib_windows)
    return input_moments(model, ids)


def export_cli(src: str, out: Path, options: dict) -> dict:
    """The ``TARGETS['gguf']`` entry: ``--type``, ``--bpw``, ``--calib``, ``--force`` from the CLI."""
    fields = {f.name for f in dataclasses.fields(GGUFExportConfig)}
    kw = {k: v for k, v in options.items() if k in fields and v is not None}
    if options.get("qtype"):
        kw["qtype"] = options["qtype"].upper()
    if isinstance(kw.get("rtn_for"), str):
        kw["rtn_for"] = tuple(c for c in kw["rtn_for"].split(",") if c)
    cfg = GGUFExportConfig(**kw)
    return export_gguf(src, Path(out), cfg, force=bool(options.get("force")))

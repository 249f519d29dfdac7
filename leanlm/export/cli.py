"""``leanlm export SRC --to gguf|compressed-tensors|hf -o OUT``: a table of what was written, ``--json OUT``."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from . import TARGET_NAMES

    p = subparsers.add_parser("export", help="write a model in a format llama.cpp, vLLM or transformers loads")
    p.add_argument("src", help="model spec, HF model directory, .gguf file or leanlm output directory")
    p.add_argument("--to", required=True, choices=TARGET_NAMES, help="target format")
    p.add_argument("-o", "--output", required=True, help="output file (gguf) or directory")
    p.add_argument("--type", dest="qtype", default=None,
                   help="quantisation type: GGUF (F16, BF16, Q8_0, Q4_0, Q4_K_M, ...) or compressed-tensors "
                        "scheme (W8A8, W8A16, W8A16-G32, W4A16)")
    p.add_argument("--bpw", type=float, default=None, help="GGUF: whole-file bits-per-weight budget (mixed types)")
    p.add_argument("--calib", metavar="FILE", default=None,
                   help="calibration text file (default: leanlm's mixed calibration corpus)")
    p.add_argument("--method", default=None, choices=["rtn", "gptq"],
                   help="GGUF: importance-weighted rounding (rtn, default) or that plus GPTQ error feedback")
    p.add_argument("--rtn-for", dest="rtn_for", default=None, metavar="CATS",
                   help="GGUF with --method gptq: tensor categories rounded without error feedback, e.g. "
                        "attn_v,ffn_down")
    p.add_argument("--no-keep-grid", dest="keep_grid", action="store_const", const=False, default=None,
                   help="GGUF: quantise every block, also those whose values already lie on the type's grid "
                        "(by default such blocks are coded on it exactly)")
    p.add_argument("--group-size", type=int, default=None, help="compressed-tensors W4: group size")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", metavar="OUT", help="also write the result document here")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..cli import _write_json
    from ..report.tables import render_mapping
    from . import export

    doc = export(args.src, args.to, args.output, vars(args))
    render_mapping(f"export {args.to}", doc)
    _write_json(args.json, doc)
    return 0

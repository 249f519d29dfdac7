"""The leanlm command line: parse arguments into a config, call one public function, render the result.

Each verb lives in a small ``cmd_*`` function; the heavy imports happen inside it, so ``leanlm --help``
is instant and a verb's dependencies never slow down another's start.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__


def _write_json(path: str | None, doc: dict) -> None:
    if path:
        from .fileio import atomic_write_json

        atomic_write_json(path, doc)
        logging.getLogger("leanlm").info("wrote %s", path)


# ----------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from .config import from_args
    from .eval import EvalConfig, evaluate_spec
    from .report.tables import render_eval

    cfg = from_args(EvalConfig, args)
    doc = evaluate_spec(args.spec, cfg, dtype=args.dtype)
    render_eval(doc)
    _write_json(args.json, doc)
    return 0


# ------------------------------------------------------------------------- compress & friends
def cmd_compress(args: argparse.Namespace) -> int:
    from .compress import compress

    doc = compress(args.spec, method=args.method, out=args.output, options=vars(args))
    from .report.tables import render_mapping

    render_mapping(f"compress {args.method}", doc)
    _write_json(args.json, doc)
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from .compress.lossless.api import decompress_model
    from .report.tables import render_mapping

    doc = decompress_model(args.path, args.output, force=args.force, threads=args.threads or 0)
    render_mapping("decompress", doc)
    _write_json(args.json, doc)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .compress.lossless.api import verify_model
    from .report.tables import render_mapping

    doc = verify_model(args.path, against=args.against, threads=args.threads or 0)
    render_mapping("verify", doc)
    _write_json(args.json, doc)
    return 0 if doc.get("ok") else 1


# ----------------------------------------------------------------------------------------- parser
# Packages that own a verb with many options register it themselves: module.register(subparsers)
# adds their subparser(s) and sets ``func``. Listed here so this file stays the one index of verbs.
VERB_MODULES = ("leanlm.evolve.cli",   # evolve
                "leanlm.report.cli",   # bench, audit, report
                "leanlm.export.cli",   # export
                "leanlm.serve.cli")    # serve


def _register_verbs(sub) -> None:
    import importlib

    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (name == e.name or name.startswith(f"{e.name}.")):  # the verb's own module (or its package)
                raise                                                      # is absent: skip; else a real error
            continue
        module.register(sub)


def build_parser() -> argparse.ArgumentParser:
    from .compress.methods import METHOD_NAMES
    from .config import add_arguments
    from .eval.protocol import EvalConfig

    p = argparse.ArgumentParser(prog="leanlm", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"leanlm {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True)

    e = sub.add_parser("eval", help="perplexity, task accuracy, memory and speed of a model")
    e.add_argument("spec", help="model spec: smollm2-135m, tiny-*, a model directory or a .gguf file")
    e.add_argument("--dtype", default="bf16", help="compute dtype (bf16, fp16, fp32)")
    e.add_argument("--json", metavar="OUT", help="also write the result document here")
    add_arguments(e, EvalConfig)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compress", help="compress a model (lossless, quantised, low-rank, combined)")
    c.add_argument("spec")
    c.add_argument("--method", required=True, choices=METHOD_NAMES)
    c.add_argument("-o", "--output", required=True, help="output directory")
    c.add_argument("--remove", type=float, default=None, help="fraction of parameters to remove (low-rank)")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--mode", choices=["max", "fast"], default=None,
                   help="lossless: max (rANS, best ratio, default) or fast (Huffman, fastest decode)")
    c.add_argument("--threads", type=int, default=None, help="lossless: encode threads (default: all cores)")
    c.add_argument("--config", metavar="JSON", help="JSON file of the method's config fields (svd, lowrank, "
                   "tt-embed, combined: step order and budgets)")
    c.add_argument("--json", metavar="OUT")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="write a losslessly compressed model back, byte-identical")
    d.add_argument("path")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--force", action="store_true")
    d.add_argument("--threads", type=int, default=None, help="decode threads (default: all cores)")
    d.add_argument("--json", metavar="OUT")
    d.set_defaults(func=cmd_decompress)

    v = sub.add_parser("verify", help="re-check every checksum of a compressed model")
    v.add_argument("path")
    v.add_argument("--against", help="also compare every tensor with this original spec")
    v.add_argument("--threads", type=int, default=None, help="decode threads (default: all cores)")
    v.add_argument("--json", metavar="OUT")
    v.set_defaults(func=cmd_verify)
    _register_verbs(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # torchao (imported by transformers) logs missing GPU kernels and torch logs pytree deprecations at
    # import time; neither matters on CPU, so keep them out of the user's terminal.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, NotImplementedError) as e:
        # Expected failures (bad spec, corrupt file, wrong option) end with one clear line, not a traceback.
        if args.verbose:
            raise
        print(f"leanlm {args.verb}: error: {e}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())

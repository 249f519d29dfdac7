"""``leanlm serve SPEC_OR_RUN``: the OpenAI-compatible server (options from ``ServeConfig``)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..config import add_arguments
    from .config import ServeConfig

    p = subparsers.add_parser("serve", help="OpenAI-compatible endpoint; follows an evolve run and hot-swaps "
                                            "accepted generations",
                              description="Serves a spec, a leanlm artifact or an evolve run directory (its latest "
                                          "accepted generation; --follow swaps in new ones).")
    p.add_argument("spec", help="model spec, artifact directory or evolve run directory")
    add_arguments(p, ServeConfig)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..config import from_args
    from .config import ServeConfig
    from .server import serve

    cfg = from_args(ServeConfig, args)
    return serve(args.spec, cfg)

"""Baseline numbers of the bundled model: `leanlm eval` with the default protocol.

    .venv/bin/python benchmarks/eval_baseline.py [--spec smollm2-135m] [--json benchmarks/results/eval_smollm2.json]
"""
import argparse
import sys

from leanlm.cli import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", default="smollm2-135m")
    ap.add_argument("--json", default="benchmarks/results/eval_smollm2.json")
    ap.add_argument("--quick", action="store_true", help="fewer problems and tokens")
    a = ap.parse_args()
    extra = ["--n", "10", "--max-tokens", "2048"] if a.quick else []
    sys.exit(main(["eval", a.spec, "--json", a.json, *extra]))

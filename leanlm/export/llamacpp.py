"""llama.cpp's own tools, found and run: ``llama-perplexity``, ``llama-quantize``, ``llama-imatrix``, ``llama-bench``.

``make llama-cpp`` builds them from the llama.cpp that the ``llama-cpp-python`` sdist vendors; ``tools()``
looks in ``$LEANLM_LLAMA_CPP_BIN``, then that build, then ``PATH``. Each runner returns parsed numbers
and the exact command line, and raises ``LlamaCppError`` with the tool's last output lines on failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_GLOB = ".cache/engines/llama_cpp_python-*/vendor/llama.cpp/build/bin"
TOOLS = ("llama-perplexity", "llama-quantize", "llama-imatrix", "llama-bench")


class LlamaCppError(RuntimeError):
    """A llama.cpp tool is missing or failed; the message says which and why."""


def bin_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("LEANLM_LLAMA_CPP_BIN"):
        dirs.append(Path(os.environ["LEANLM_LLAMA_CPP_BIN"]))
    dirs += sorted(REPO.glob(BUILD_GLOB), reverse=True)
    return dirs


def find_tool(name: str) -> Path | None:
    for d in bin_dirs():
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return d / name
    found = shutil.which(name)
    return Path(found) if found else None


def tools() -> dict[str, Path | None]:
    return {t: find_tool(t) for t in TOOLS}


def available(*names: str) -> bool:
    return all(find_tool(n) is not None for n in (names or TOOLS))


def _run(args: list[str], timeout: float) -> str:
    exe = find_tool(args[0])
    if exe is None:
        raise LlamaCppError(f"{args[0]} not found: run `make llama-cpp` (or set LEANLM_LLAMA_CPP_BIN)")
    try:
        p = subprocess.run([str(exe), *args[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LlamaCppError(f"{args[0]} timed out after {timeout:.0f} s") from e
    out = p.stdout + p.stderr
    if p.returncode != 0:
        tail = "\n".join(out.splitlines()[-15:])
        raise LlamaCppError(f"{' '.join(args)} failed with exit code {p.returncode}:\n{tail}")
    return out


def perplexity(model: Path, text_file: Path, ctx: int = 256, chunks: int | None = None, threads: int = 2,
               kl_base: Path | None = None, kl_save: Path | None = None, timeout: float = 1800) -> dict:
    """``llama-perplexity``: PPL over ``ctx``-token chunks (second half of each chunk scored, llama.cpp's rule).

    With ``kl_save`` the run stores its logits; with ``kl_base`` it compares to those stored logits and
    also returns the mean KL divergence and top-1 agreement ("same top p").
    """
    args = ["llama-perplexity", "-m", str(model), "-c", str(ctx), "-t", str(threads), "-b", str(max(ctx, 512))]
    if kl_base is not None:
        args += ["--kl-divergence-base", str(kl_base), "--kl-divergence"]
    else:
        args += ["-f", str(text_file)]
        if kl_save is not None:
            args += ["--kl-divergence-base", str(kl_save)]
    if chunks:
        args += ["--chunks", str(chunks)]
    out = _run(args, timeout)
    res: dict = {"command": " ".join(["llama-perplexity", *args[1:]])}
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", out)
    if m:
        res["ppl"], res["ppl_se"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", out)
    if m and "ppl" not in res:
        res["ppl"] = float(m.group(1))
    m = re.search(r"Mean\s+KLD:\s*([-\d.]+)\s*±\s*([\d.]+)", out)
    if m:
        res["kld"], res["kld_se"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"Same top p:\s*([\d.]+)\s*±\s*([\d.]+)\s*%", out)
    if m:
        res["top1"], res["top1_se"] = float(m.group(1)) / 100, float(m.group(2)) / 100
    if "ppl" not in res and "kld" not in res:
        raise LlamaCppError("llama-perplexity printed no estimate:\n" + "\n".join(out.splitlines()[-10:]))
    return res


def imatrix(model: Path, text_file: Path, out: Path, ctx: int = 512, chunks: int | None = None, threads: int = 2,
            timeout: float = 1800) -> dict:
    """``llama-imatrix`` over the first ``chunks`` ``ctx``-token chunks of ``text_file``."""
    args = ["llama-imatrix", "-m", str(model), "-f", str(text_file), "-o", str(out), "-c", str(ctx),
            "-t", str(threads), "--no-ppl"] + (["--chunks", str(chunks)] if chunks else [])
    _run(args, timeout)
    if not out.is_file():
        raise LlamaCppError(f"llama-imatrix wrote no {out}")
    return {"command": " ".join(args), "file": str(out)}


def quantize(src: Path, out: Path, qtype: str, imatrix_file: Path | None = None, threads: int = 2,
             timeout: float = 1800) -> dict:
    args = ["llama-quantize"]
    if imatrix_file is not None:
        args += ["--imatrix", str(imatrix_file)]
    args += [str(src), str(out), qtype, str(threads)]
    _run(args, timeout)
    return {"command": " ".join(args), "file": str(out), "bytes": out.stat().st_size}


def bench(model: Path, n_gen: int = 64, n_prompt: int = 0, threads: int = 1, reps: int = 3,
          timeout: float = 900) -> dict:
    """``llama-bench``: decode (tg) tokens/s, median-free mean +- sd as llama-bench reports over ``reps``."""
    args = ["llama-bench", "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
            "-r", str(reps), "-o", "json"]
    out = _run(args, timeout)
    start = out.find("[")
    try:
        rows = json.loads(out[start:out.rfind("]") + 1])
    except json.JSONDecodeError as e:
        raise LlamaCppError(f"llama-bench output is not JSON: {e}") from e
    tg = next(r for r in rows if r.get("n_gen", 0) > 0)
    return {"command": " ".join(args), "tok_s": tg["avg_ts"], "tok_s_sd": tg.get("stddev_ts"),
            "samples_ts": tg.get("samples_ts")}

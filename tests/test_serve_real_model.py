"""SmolLM2-135M-Instruct through ``leanlm serve``: the model's chat template, and (when llama-cpp-python
imports) the llama.cpp backend on the bundled GGUF against the torch backend."""
import importlib.util

import openai
import pytest
import torch
from _serve_util import tiny_cfg

from leanlm.eval.generate import GenerationConfig, generate
from leanlm.serve.server import ServerThread

pytestmark = pytest.mark.real_model
QUESTIONS = ("What is 3 + 4?", "Name a colour of the sky.", "Say hello in French.")


def test_chat_uses_the_models_template_and_matches_leanlm_generate():
    with ServerThread("smollm2-135m", tiny_cfg(max_prompt_tokens=256)) as s:
        backend = s.ctx.registry.current.backend
        ref = generate(backend.model, backend.text.tok, list(QUESTIONS),
                       GenerationConfig(max_new_tokens=12, batch_size=3), progress=False)
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        for q, (want,) in zip(QUESTIONS, ref):
            r = c.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": q}],
                                          max_tokens=12, temperature=0)
            assert r.model == "smollm2-135m@base"
            assert r.choices[0].message.content == want      # same template, same greedy tokens
        assert backend.prefix_hits >= 1                      # the third question reused the system preamble
        prompt_ids = backend.text.chat([{"role": "user", "content": QUESTIONS[0]}])
        assert "<|im_start|>" in backend.text.tok.decode(prompt_ids)   # SmolLM2's ChatML template


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (the llama_cpp backend needs it)")
def test_llama_cpp_backend_agrees_with_torch_on_the_gguf():
    from leanlm.models.specs import packaged_gguf_path
    from leanlm.serve.backends.llama_cpp import load_llama_cpp
    from leanlm.serve.backends.torch_backend import load_torch

    gguf = str(packaged_gguf_path("smollm2-135m"))
    lc, tb = load_llama_cpp(gguf, threads=1), load_torch("smollm2-135m", dtype="fp32")   # the same weights
    agree = 0
    for q in QUESTIONS:
        ids = tb.text.chat([{"role": "user", "content": q}])
        assert lc.text.chat([{"role": "user", "content": q}]) == ids        # one template, one tokenizer
        _, l_lc = lc.prefill([ids])
        _, l_tb = tb.prefill([ids])
        agree += int(l_lc.argmax()) == int(l_tb.argmax())
        assert torch.nn.functional.cosine_similarity(l_lc[0], l_tb[0], dim=0) > 0.98
    assert agree >= 2
    with ServerThread(gguf, tiny_cfg(backend="llama_cpp", max_prompt_tokens=256)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        chunks = list(c.chat.completions.create(model=s.ctx.registry.name, stream=True, max_tokens=8,
                                                messages=[{"role": "user", "content": QUESTIONS[0]}]))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

"""Loads the bundled SmolLM2-135M-Instruct (published as Q4_1 GGUF). Deselect with -m 'not real_model'."""
import pytest

from leanlm import load
from leanlm.eval import EvalConfig, evaluate

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smol():
    return load("smollm2-135m")


def test_perplexity_on_default_corpus_is_sane(smol):
    model, tok = smol
    r = evaluate(model, tok, EvalConfig(max_tokens=2048, tasks=(), speed=False, progress=False))
    # Measured 16.2 on 8192 tokens (bf16); a broken loader/tokenizer gives hundreds or thousands.
    assert 8 < r["perplexity"]["perplexity"] < 30
    assert r["memory"]["weights_in_memory_bytes"] == pytest.approx(134.5e6 * 2, rel=0.01)  # bf16, tied head


def test_answers_easy_sums(smol):
    model, tok = smol
    r = evaluate(model, tok, EvalConfig(perplexity=False, tasks=("mul:1",), n=16, speed=False, progress=False))
    assert r["tasks"]["mul:1"]["accuracy"] >= 0.25  # measured 57% on n=40: the chat path and extraction work

"""The vLLM-vs-transformers comparison (``leanlm.export.vllm``) without vLLM: greedy-text agreement and the
teacher-forced top-1 agreement, with the engine's side played by transformers' own predictions, then
perturbed. (The engine itself runs in ``benchmarks/export_ct.py --parts vllm``.)"""
from __future__ import annotations

import pytest
import torch

from leanlm.export import export
from leanlm.export.vllm import compare, teacher_forced, transformers_generate, transformers_model, transformers_top2


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm-compare") / "dense"
    export("tiny-llama", "hf", out, {"qtype": "F32"})
    return transformers_model(out, "fp32")


PROMPTS = [[1, 5, 9, 13], [1, 7, 8], [1, 30, 31, 32, 33, 34]]


def test_teacher_forced_agrees_with_itself_and_names_a_split(dense):
    conts = transformers_generate(dense, PROMPTS, 6)
    assert all(len(c) > 0 for c in conts)
    # the engine's rows: its top-1 at every position after the first of prompt + continuation
    engine = [transformers_top2(dense, p + c, 1)[0] for p, c in zip(PROMPTS, conts)]
    same = teacher_forced(PROMPTS, conts, dense, engine)
    n = sum(len(c) for c in conts)
    assert same["positions"] == n and same["top1_agree"] == n and same["disagreement_margins"] == []
    # greedy decoding picks the teacher-forced top-1 (same model, same dtype)
    assert [transformers_top2(dense, p + c, len(p))[0] for p, c in zip(PROMPTS, conts)] == conts

    # the engine disagrees at one continuation position: counted, with transformers' margin there
    k = len(PROMPTS[1]) - 1 + 2                  # third continuation token of the second prompt
    engine[1][k] = (engine[1][k] + 1) % dense.config.vocab_size
    split = teacher_forced(PROMPTS, conts, dense, engine)
    margin = transformers_top2(dense, PROMPTS[1] + conts[1], len(PROMPTS[1]))[1][2]
    assert split["top1_agree"] == n - 1
    assert split["disagreement_margins"] == [pytest.approx(margin, abs=1e-4)] and margin > 0


def test_teacher_forced_rejects_a_short_engine_row(dense):
    conts = transformers_generate(dense, PROMPTS[:1], 4)
    engine = [transformers_top2(dense, PROMPTS[0] + conts[0], 1)[0][:-2]]
    with pytest.raises(RuntimeError, match="scored"):
        teacher_forced(PROMPTS[:1], conts, dense, engine)


def test_greedy_compare_counts_prefix_and_ignores_a_shared_eos():
    got = compare([[4, 5, 6, 2], [4, 5, 6]], [[4, 5, 6, 2], [4, 9, 6, 7]], eos={2})
    assert got["same_text"] == 1 and got["tokens_matched"] == 3 + 1 and got["tokens_total"] == 3 + 4


def test_unknown_dtype_is_named(tmp_path):
    with pytest.raises(ValueError, match="fp8"):
        transformers_model(tmp_path, "fp8")

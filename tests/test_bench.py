"""leanlm bench: paired measurements, row status handling, and the whole table on tiny-llama."""
import math

import pytest
import torch

from leanlm.config import ConfigError
from leanlm.report.bench import BenchConfig, quick_config, run_bench
from leanlm.report.measure import interleaved_speed, sequence_agreement, token_pass, top1_agreement
from leanlm.report.render import COLUMNS

TINY = dict(max_tokens=400, context=96, stride=64, n=2, max_new_tokens=6, gen_batch=8, speed_repeats=1,
            speed_prompt_len=16, speed_decode_tokens=4, progress=False, tasks=("add:1", "reverse:3"))


def test_token_pass_matches_eval_perplexity(tiny):
    from leanlm.eval.perplexity import perplexity

    model, _ = tiny
    ids = torch.randint(3, 90, (300,), generator=torch.Generator().manual_seed(1))
    ref = perplexity(model, ids, context=64, stride=40, batch_size=3, progress=False)   # overlapping windows
    tp = token_pass(model, ids, context=64, stride=40, batch_size=3)
    assert tp.nll.numel() == ref.tokens_scored == 299
    assert math.isclose(tp.perplexity, ref.perplexity, rel_tol=1e-9)
    assert top1_agreement(tp, tp) == 1.0
    worse = token_pass(model, ids.flip(0), context=64, stride=40)
    assert top1_agreement(tp, worse) < 1.0


def test_measure_is_deterministic(tiny):
    from leanlm.report.bench import _problems, measure

    model, tok = tiny
    cfg = BenchConfig(rows=("bf16",), **TINY)
    ids = torch.randint(3, 90, (200,), generator=torch.Generator().manual_seed(2))
    a, b = (measure(model, tok, ids, _problems(cfg), cfg) for _ in range(2))
    assert torch.equal(a.tokens.nll, b.tokens.nll) and torch.equal(a.tokens.top1, b.tokens.top1)
    assert a.outputs == b.outputs and a.skills == b.skills and len(a.outputs) == 4


def test_sequence_agreement_hand_computed():
    r = sequence_agreement([[1, 2, 3], [4, 5], [7]], [[1, 2, 4], [4, 5, 6], [7]])
    assert r["token_agreement"] == pytest.approx(5 / 7)       # 2 of 3, 2 of 3 (extra token), 1 of 1
    assert r["exact_match"] == pytest.approx(1 / 3)
    assert r["prefix_agreement"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError):
        sequence_agreement([[1]], [])


def test_interleaved_speed_reports_both(tiny):
    model, _ = tiny
    a, b = interleaved_speed(model, model, repeats=2, prompt_len=8, decode_tokens=3)
    for d in (a, b):
        assert d["repeats"] == 2 and all(d[k] > 0 for k in ("prefill_tok_s", "decode_tok_s_b1", "decode_tok_s_b8"))


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown bench row"):
        BenchConfig(rows=("bf16", "zip"))
    with pytest.raises(ConfigError, match="duplicate"):
        BenchConfig(rows=("bf16", "bf16"))
    q = quick_config(n=3)
    assert q.quick and q.n == 3 and q.max_tokens < BenchConfig().max_tokens


def test_cli_merges_quick_preset_with_options():
    from leanlm.cli import build_parser
    from leanlm.report.cli import _config

    args = build_parser().parse_args(["bench", "tiny-llama", "--quick", "--n", "3", "--rows", "bf16", "svd"])
    cfg = _config(BenchConfig, quick_config(), args)
    assert cfg.quick and cfg.n == 3 and cfg.rows == ("bf16", "svd") and cfg.max_tokens == quick_config().max_tokens


@pytest.fixture(scope="module")
def bench_doc():
    """A real bench on tiny-llama: the original, a method whose module is missing, and one that crashes."""
    with pytest.MonkeyPatch.context() as mp:
        from leanlm.compress import methods

        mp.setitem(methods.METHODS, "int8", "leanlm.compress.no_such_module:compress_cli")
        mp.setitem(methods.METHODS, "svd", "json:loads")   # called with the wrong arguments: a real failure
        return run_bench("tiny-llama", BenchConfig(rows=("bf16", "int8", "svd"), **TINY))


def test_bench_original_row_agrees_with_itself(bench_doc):
    rows = {r["name"]: r for r in bench_doc["results"]["rows"]}
    bf16, orig = rows["bf16"], bench_doc["results"]["original"]
    assert bf16["status"] == "ok"
    for c in COLUMNS:
        assert c.key in bf16
    assert bf16["perplexity"] == orig["perplexity"] and bf16["perplexity_preserved"] == 1.0
    assert bf16["top1_agreement"] == 1.0 and bf16["greedy_token_agreement"] == 1.0
    assert bf16["answer_agreement"] == 1.0 and bf16["memory_reduction"] == 0.0
    assert bf16["weights_memory_bytes"] == orig["weights_memory_bytes"] > 0
    assert bf16["weights_disk_bytes"] == orig["weights_disk_bytes"] > 0 and bf16["disk_reduction"] == 0.0
    assert orig["problems"] == 4 and orig["tokens_scored"] == 399


def test_bench_marks_unbuilt_and_broken_rows(bench_doc):
    rows = {r["name"]: r for r in bench_doc["results"]["rows"]}
    assert rows["int8"]["status"] == "unavailable" and "no_such_module" in rows["int8"]["reason"]
    assert rows["int8"]["claim"]["technique"] == "INT8"
    assert rows["svd"]["status"] == "failed" and rows["svd"]["reason"].startswith("TypeError")
    assert [r["name"] for r in bench_doc["results"]["rows"]] == ["bf16", "int8", "svd"]
    assert bench_doc["kind"] == "bench" and bench_doc["protocol"]["rows"] == ["bf16", "int8", "svd"]


def test_quick_method_options_are_valid_configs():
    """The quick budget's per-method options must name real config fields of each method (no silent typo)."""
    from leanlm.report.bench import QUICK_METHOD_OPTIONS as Q

    quant = pytest.importorskip("leanlm.compress.quant.api")
    for m in ("smoothquant", "awq-w4"):
        cfg = quant.config_from_options({**Q[m], "method": m})
        for k, v in Q[m].items():
            assert getattr(cfg, k) == v
    lowrank = pytest.importorskip("leanlm.compress.lowrank.api")
    assert lowrank.lowrank_config({**Q["lowrank"], "method": "lowrank"}).n_calib == 16
    recipes = pytest.importorskip("leanlm.compress.recipes")
    assert recipes.combined_config(Q["combined"]).awq_calib_n == 8


def test_bench_lossless_row_is_identical_to_the_original():
    pytest.importorskip("leanlm.compress.lossless.api", reason="lossless codec not built yet")
    doc = run_bench("tiny-llama", BenchConfig(rows=("lossless",), **TINY))
    (row,) = doc["results"]["rows"]
    assert row["status"] == "ok", row.get("reason")
    assert row["perplexity"] == doc["results"]["original"]["perplexity"] and row["perplexity_preserved"] == 1.0
    assert row["top1_agreement"] == 1.0 and row["greedy_token_agreement"] == 1.0 and row["answer_agreement"] == 1.0
    assert 0.0 < row["disk_reduction"] < 0.5   # bf16 weights code to ~65-85% of their bytes; never below half


def test_bench_ood_column(bench_doc):
    rows = {r["name"]: r for r in bench_doc["results"]["rows"]}
    orig = bench_doc["results"]["original"]
    assert orig["ood_corpus"] == "gpl3" and orig["ood_perplexity"] > 1
    assert rows["bf16"]["ood_perplexity"] == orig["ood_perplexity"] and rows["bf16"]["ood_perplexity_preserved"] == 1.0
    assert orig["ood_perplexity"] != orig["perplexity"]   # another text, another figure

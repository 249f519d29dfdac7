import json

import pytest

from leanlm.cli import main
from leanlm.eval import EvalConfig, evaluate
from leanlm.eval.results import SCHEMA_VERSION, validate

QUICK = ["--n", "2", "--max-tokens", "300", "--context", "64", "--stride", "64", "--tasks", "add:1", "reverse:2",
         "--max-new-tokens", "4", "--speed-repeats", "1", "--no-progress"]


def test_eval_end_to_end_writes_valid_json(tmp_path, capsys):
    out = tmp_path / "r" / "eval.json"
    assert main(["eval", "tiny-llama", *QUICK, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    validate(doc)
    r = doc["results"]
    assert doc["schema_version"] == SCHEMA_VERSION and doc["model"]["spec"] == "tiny-llama"
    assert doc["protocol"]["tasks"] == ["add:1", "reverse:2"] and doc["protocol"]["context"] == 64
    assert set(r["tasks"]) == {"add:1", "reverse:2"} and all(t["n"] == 2 for t in r["tasks"].values())
    # An untrained character model: perplexity is finite and in the right ballpark of its vocabulary size.
    assert 10 < r["perplexity"]["perplexity"] < 1000
    assert r["speed"]["decode_tok_s_b8"] > 0 and r["memory"]["weights_in_memory_bytes"] > 0
    assert "perplexity" in capsys.readouterr().out  # the table was rendered


def test_eval_bad_spec_is_one_clear_error(capsys):
    assert main(["eval", "smollm3-9000"]) == 2
    err = capsys.readouterr().err
    assert "unknown model spec 'smollm3-9000'" in err and "Traceback" not in err


def test_eval_missing_corpus_is_clear(capsys, tmp_path):
    assert main(["eval", "tiny-llama", *QUICK, "--corpus", str(tmp_path / "nope.txt")]) == 2
    assert "corpus file not found" in capsys.readouterr().err


def test_memory_counts_tied_weights_once(tiny):
    model, tok = tiny
    params = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    r = evaluate(model, tok, EvalConfig(perplexity=False, tasks=(), speed=False, progress=False))
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert r["memory"]["weights_in_memory_bytes"] == sum(params.values()) + buffers


def test_validate_rejects_foreign_documents():
    with pytest.raises(ValueError, match="lacks"):
        validate({"schema_version": SCHEMA_VERSION})

"""End to end: compress / decompress / verify / load (eager and on the fly) / delta, on tiny models, and
one real-model check on SmolLM2."""
from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import pytest
import torch

from leanlm.cli import main as cli_main
from leanlm.compress.lossless import api
from leanlm.compress.lossless import format as fmt
from leanlm.eval.generate import GenerationConfig, generate
from leanlm.eval.memory import memory_bytes
from leanlm.models import load

PROMPTS = ["12+7=", "hello wor"]


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    model, tok = load("tiny-llama", dtype="bf16")
    d = tmp_path_factory.mktemp("tiny") / "src"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_out(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tinyout") / "lossless"
    assert cli_main(["compress", str(tiny_dir), "--method", "lossless", "-o", str(out)]) == 0
    return out


def test_manifest_and_container_layout(tiny_out):
    m = json.loads((tiny_out / fmt.MANIFEST).read_text())
    assert m["format"] == "leanlm.lossless" and m["format_version"] == fmt.FORMAT_VERSION
    assert m["config"]["chunk_values"] == 1 << 18
    stores = {e["path"]: e["store"] for e in m["files"]}
    assert stores["model.safetensors"] == "safetensors" and stores["config.json"] == "copy"
    assert (tiny_out / "data" / "model.lossless.safetensors").is_file()
    assert m["totals"]["weights_ratio"] < 0.9   # random-init bf16 still compresses


def test_decompress_is_byte_identical(tiny_dir, tiny_out, tmp_path):
    assert cli_main(["decompress", str(tiny_out), "-o", str(tmp_path / "back")]) == 0
    assert same_tree(tiny_dir, tmp_path / "back")
    with pytest.raises(FileExistsError):
        api.decompress_model(tiny_out, tmp_path / "back")
    assert api.decompress_model(tiny_out, tmp_path / "back", force=True)["checksums"] == "ok"


def test_verify(tiny_dir, tiny_out, tmp_path):
    doc = api.verify_model(tiny_out, against=tiny_dir)
    assert doc["ok"] and doc["tensors_ok"] == doc["tensors_checked"] > 0 and not doc["errors"]
    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text((tiny_dir / "config.json").read_text() + " ")
    doc = api.verify_model(tiny_out, against=other)
    assert not doc["ok"] and any("config.json" in e for e in doc["errors"])


def test_identical_logits_and_greedy_text(tiny_dir, tiny_out):
    ref, tok = load(str(tiny_dir), dtype="bf16")
    got, tok2 = load(str(tiny_out), dtype="bf16")
    lazy, _ = api.load_lazy(tiny_out, torch.bfloat16, "cpu")
    ids = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = ref(**ids).logits
        assert torch.equal(want, got(**ids).logits)
        assert torch.equal(want, lazy(**ids).logits)
    cfg = GenerationConfig(max_new_tokens=12)
    assert generate(ref, tok, PROMPTS, cfg) == generate(got, tok2, PROMPTS, cfg) == generate(lazy, tok2, PROMPTS, cfg)
    # on the fly: managed weights are freed between forwards, and the model holds less than the plain one
    assert all(p.numel() == 0 for params in lazy.lazy_weights.units.values() for p, _ in params)
    assert memory_bytes(lazy) + lazy.lazy_weights.coded_bytes() < 0.85 * memory_bytes(got)


def test_tampered_copy_is_refused(tiny_out, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_out, bad)
    (bad / "data" / "config.json").write_text("{}")
    with pytest.raises(fmt.FormatError, match="config.json"):
        api.decompress_model(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()   # atomic: nothing half-written


@pytest.fixture(scope="module")
def child_dir(tiny_dir, tmp_path_factory) -> Path:
    """A fine-tuned child: a few AdamW steps on arithmetic text, saved in bf16."""
    model, tok = load(str(tiny_dir), dtype="fp32")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    ids = tok(["1+1=2", "12+30=42", "7+8=15"], return_tensors="pt", padding=True)["input_ids"]
    torch.manual_seed(0)
    for _ in range(4):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    d = tmp_path_factory.mktemp("child") / "child"
    model.to(torch.bfloat16).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_delta_roundtrip_and_ratio(tiny_dir, child_dir, tmp_path):
    full = api.compress_path(child_dir, tmp_path / "full")["totals"]["weights_stored_bytes"]
    doc = api.compress_delta(child_dir, tiny_dir, tmp_path / "delta")
    assert doc["tensor_codecs"].get("xor-rans", 0) > 0
    delta_weights = json.loads((tmp_path / "delta" / fmt.MANIFEST).read_text())["totals"]["weights_stored_bytes"]
    assert delta_weights < 0.8 * full, (delta_weights, full)
    m = json.loads((tmp_path / "delta" / fmt.MANIFEST).read_text())
    for e in m["files"]:   # files identical to the parent's are referenced, not copied
        same = (tiny_dir / e["path"]).is_file() and filecmp.cmp(child_dir / e["path"], tiny_dir / e["path"], shallow=False)
        assert (e["store"] == "parent") == (same and e["store"] != "safetensors"), e["path"]
    api.decompress_delta(tmp_path / "delta", tiny_dir, tmp_path / "child2")
    assert same_tree(child_dir, tmp_path / "child2")


def test_delta_refuses_wrong_parent(tiny_dir, child_dir, tmp_path):
    api.compress_delta(child_dir, tiny_dir, tmp_path / "delta")
    with pytest.raises(api.DeltaParentError, match="not the parent"):
        api.decompress_delta(tmp_path / "delta", child_dir, tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_delta_stores_new_tensors_whole(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    child = tmp_path / "grown"
    child.mkdir()
    for f in tiny_dir.iterdir():
        (child / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(tiny_dir / "model.safetensors"))
    sd["extra.weight"] = torch.randn(33, 7).to(torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(128, dtype=torch.bfloat16)      # shape changed: stored whole
    save_file(sd, str(child / "model.safetensors"), metadata={"format": "pt"})
    doc = api.compress_delta(child, tiny_dir, tmp_path / "d")
    assert doc["tensor_codecs"]["rans"] == 2
    api.decompress_delta(tmp_path / "d", tiny_dir, tmp_path / "back")
    assert same_tree(child, tmp_path / "back")


def test_encoder_and_single_file(tmp_path):
    """A non-causal-LM (BERT-like encoder) directory and a lone safetensors file round-trip; loading the
    encoder as a causal LM fails with a clear pointer to decompress."""
    from transformers import BertConfig, BertModel

    enc_dir = tmp_path / "encoder"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100)).save_pretrained(enc_dir)
    api.compress_cli(str(enc_dir), tmp_path / "enc.ll", {})
    api.decompress_model(tmp_path / "enc.ll", tmp_path / "enc.back")
    assert same_tree(enc_dir, tmp_path / "enc.back")
    with pytest.raises(api.NotACausalLMError, match="decompress"):
        load(str(tmp_path / "enc.ll"))
    single = enc_dir / "model.safetensors"
    api.compress_cli(str(single), tmp_path / "one.ll", {"force": True})
    api.decompress_model(tmp_path / "one.ll", tmp_path / "one.back")
    assert os.listdir(tmp_path / "one.back") == ["model.safetensors"]
    assert filecmp.cmp(single, tmp_path / "one.back" / "model.safetensors", shallow=False)
    with pytest.raises(api.NotACausalLMError, match="config.json"):
        load(str(tmp_path / "one.ll"))


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_roundtrip_logits_and_text(tmp_path):
    from leanlm.models import model_dir

    src = model_dir("smollm2-135m")
    doc = api.compress_cli("smollm2-135m", tmp_path / "s", {})
    assert doc["weights_ratio"] < 100e6 / 269e6   # dequantised Q4_1/Q8_0: grid-coded, near the GGUF size
    ref, tok = load(str(src), dtype="bf16")
    got, _ = load(str(tmp_path / "s"), dtype="bf16")
    ids = tok(["The capital of France is", "def add(a, b):"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(ref(**ids).logits, got(**ids).logits)
    cfg = GenerationConfig(max_new_tokens=8)
    assert generate(ref, tok, ["Name a colour."], cfg) == generate(got, tok, ["Name a colour."], cfg)

"""hf dense export: leanlm artifacts back to a plain directory that ``AutoModelForCausalLM`` loads.

Reference: ``leanlm.load`` of the source artifact (its own integer / low-rank modules); the exported
directory reloaded with plain transformers must give the same logits within a tolerance that a model
exported from a different source fails.
"""
import json

import pytest
import torch

import leanlm
from leanlm.compress import compress
from leanlm.export import export
from leanlm.fileio import sha256_file

IDS = torch.randint(3, 60, (2, 40), generator=torch.Generator().manual_seed(1))
METHODS = ("int8", "w8a8", "rtn-w4", "lowrank", "int8-block")  # awq-w4 loads as rtn-w4 does (same Int4Linear)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfsrc")
    calib = root / "calib.txt"
    calib.write_text("\n\n".join(f"{i} + {i} = {2 * i}, and {i} times 3 is {3 * i}." for i in range(300)))
    out = {}
    for m in METHODS:
        opts = {"calib_n": 4, "calib_seq_len": 64, "calib_corpus": str(calib)}
        compress("tiny-llama", m, root / m, opts)
        model, _ = leanlm.load(str(root / m), dtype="bf16")
        with torch.no_grad():
            out[m] = (root / m, model(input_ids=IDS).logits.float())
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("qtype", ["BF16", "F32"])
def test_reload_with_plain_transformers(artifacts, tmp_path, method, qtype):
    from transformers import AutoModelForCausalLM

    src, ref = artifacts[method]
    doc = export(str(src), "hf", tmp_path / "hf", {"qtype": qtype})
    assert doc["densified_modules"] == 14   # every block linear of tiny-llama's 2 layers
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.dtype == (torch.float32 if qtype == "F32" else torch.bfloat16)
    assert all(type(m).__name__ in ("Linear",) for n, m in model.named_modules() if n.endswith("_proj"))
    with torch.no_grad():
        got = model(input_ids=IDS).logits.float()
    diff = float((got - ref).abs().max())
    assert diff < 0.03, diff
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.97
    other = artifacts["lowrank" if method != "lowrank" else "rtn-w4"][1]
    assert float((other - ref).abs().max()) > 0.03   # the tolerance separates different models


def test_files_and_manifest(artifacts, tmp_path):
    src, _ = artifacts["rtn-w4"]
    export(str(src), "hf", tmp_path / "hf", {})
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (tmp_path / "hf" / f).is_file(), f
    man = json.loads((tmp_path / "hf" / "leanlm-export.json").read_text())
    assert man["format"] == "leanlm.export.hf" and man["dtype"] == "bfloat16"
    for name, info in man["files"].items():
        assert sha256_file(tmp_path / "hf" / name) == info["sha256"], name
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization_config" not in cfg
    model, _ = leanlm.load(str(tmp_path / "hf"))   # reads as an HF directory (no leanlm.json there)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_bad_type_and_missing_source(tmp_path):
    with pytest.raises(ValueError, match="BF16"):
        export("tiny-llama", "hf", tmp_path / "a", {"qtype": "Q4_0"})
    with pytest.raises(Exception, match="nowhere"):
        export(str(tmp_path / "nowhere"), "hf", tmp_path / "b", {})

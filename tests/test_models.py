import json

import pytest
import torch

from leanlm import load
from leanlm.models import ModelLoadError, ModelSpecError, parse_dtype
from leanlm.models.tiny import CHARSET, char_tokenizer


def test_unknown_spec_names_valid_specs():
    with pytest.raises(ModelSpecError) as e:
        load("no-such-model")
    assert "smollm2-135m" in str(e.value) and "tiny-llama" in str(e.value)


def test_directory_without_model_files(tmp_path):
    with pytest.raises(ModelSpecError, match="config.json"):
        load(str(tmp_path))


def test_wrong_dtype():
    with pytest.raises(ValueError, match="unsupported dtype"):
        parse_dtype("int3")


def test_tiny_is_deterministic_and_dtype_explicit():
    m1, _ = load("tiny-llama", dtype="fp32")
    m2, _ = load("tiny-llama", dtype="bf16")
    assert next(m1.parameters()).dtype == torch.float32 and next(m2.parameters()).dtype == torch.bfloat16
    m3, _ = load("tiny-llama", dtype="fp32")
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)


def test_tiny_add_has_no_positional_encoding_and_tiny_llama_has_rope(tmp_path):
    x = torch.randint(3, 60, (1, 12))
    shifted = torch.arange(12)[None] + 40
    nope, _ = load("tiny-add")
    same = nope(input_ids=x).logits
    torch.testing.assert_close(nope(input_ids=x, position_ids=shifted).logits, same, rtol=0, atol=1e-5)
    nope.save_pretrained(tmp_path)             # still a plain Llama config: reloads with NoPE intact
    back = __import__("transformers").LlamaForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(back(input_ids=x, position_ids=shifted).logits, same, rtol=0, atol=1e-5)
    rope, _ = load("tiny-llama")
    assert not torch.allclose(rope(input_ids=x, position_ids=shifted * 3).logits, rope(input_ids=x).logits, atol=1e-4)


def test_char_tokenizer_round_trips_charset():
    tok = char_tokenizer()
    ids = tok(CHARSET, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(CHARSET) and tok.decode(ids) == CHARSET


def test_hf_dir_round_trip_and_corrupt_weights(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    back, tok2 = load(str(tmp_path / "m"), dtype="fp32")
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    assert tok2("12+3")["input_ids"] == tok("12+3")["input_ids"]
    # Truncate the weights: a clear error naming the path, never silently wrong weights.
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load(str(tmp_path / "m"))


def test_corrupt_manifest(tmp_path):
    (tmp_path / "leanlm.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load(str(tmp_path))
    (tmp_path / "leanlm.json").write_text(json.dumps({"format": "leanlm.nope"}))
    with pytest.raises(ModelSpecError, match="unknown leanlm artifact format"):
        load(str(tmp_path))


def test_loads_in_two_threads_leave_transformers_unpatched(tmp_path):
    """transformers patches PreTrainedModel.tie_weights (and torch.nn.init) process-wide while it loads; two
    loads at once used to restore each other's patch, leaving tie_weights a no-op for good (later tied
    models loaded with lm_head on meta; seen as a cascade of CI failures with `leanlm serve --follow`
    loading beside an evolve loop). leanlm.load serialises loads, so both threads' models come back tied
    and the functions are restored."""
    import threading

    from transformers import PreTrainedModel

    from leanlm.models.load import save_hf

    original = PreTrainedModel.tie_weights
    model, tok = load("tiny-llama", dtype="fp32")
    save_hf(model, tok, tmp_path / "m")
    bad = []

    def work():
        for _ in range(6):
            m, _ = load(str(tmp_path / "m"), dtype="fp32")
            if m.lm_head.weight.is_meta or m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr():
                bad.append(m)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad and PreTrainedModel.tie_weights is original

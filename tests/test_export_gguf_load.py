"""GGUF files leanlm writes, read back by other readers: transformers' GGUF loader gives the logits of
leanlm's dequantised weights, and the metadata built from a HF config and tokenizer (``gguf_meta``) is
what llama.cpp's own converter wrote for the same model.

References: the model rebuilt from gguf-py's dequantiser plus our inverse q/k permutation (leanlm's own
reading of the file) against transformers' reader (its own name map and inverse permutation); the
packaged SmolLM2 GGUF's metadata (written by llama.cpp's ``convert_hf_to_gguf.py``) for ``gguf_meta``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from leanlm.export.gguf import GGUFExportConfig, export_gguf  # noqa: E402
from leanlm.export.gguf_meta import write_hf_metadata  # noqa: E402
from leanlm.export.gguf_source import LAYOUT, gguf_arrays, gguf_name, name_map, unpermute_rows  # noqa: E402
from leanlm.models.tiny import char_tokenizer  # noqa: E402

# SQNR floors (dB) of each file's weights against the float source (GPTQ trades plain SQNR for output error)
SQNR_FLOOR = {"Q8_0": 35.0, "Q4_0": 12.0}
# relative logit error of the file vs the float model: a bound that a wrong row order would break
LOGIT_REL = {"Q8_0": 0.02, "Q4_0": 0.25}


@pytest.fixture(autouse=True)
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(2, n))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory):
    """An untied Llama with grouped-query attention (4 heads, 2 KV heads) saved as a HF directory:
    the export builds its metadata from the HF config (no source GGUF) and writes an output.weight."""
    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      rope_theta=50000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():       # norms away from 1 so a misplaced norm weight would show in the logits
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("gqa")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model


def _export(spec: str, qtype: str, out):
    cfg = GGUFExportConfig(qtype=qtype, calib="pydoc", calib_windows=2, seq_len=128)
    return export_gguf(spec, out, cfg, force=True)


def _from_file(model, path) -> LlamaForCausalLM:
    """``model``'s architecture with the weights gguf-py decodes from ``path``, rows un-permuted by leanlm."""
    arrays = gguf_arrays(gguf.GGUFReader(str(path)))
    nmap, c = name_map(model, LAYOUT["llama"]), model.config
    state = {}
    for hf_name, t in model.state_dict().items():
        name = gguf_name(nmap, hf_name)
        if name == "output.weight" and name not in arrays:
            name = "token_embd.weight"
        w = torch.from_numpy(arrays[name].copy())
        if name.endswith("attn_q.weight"):
            w = unpermute_rows(w, c.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            w = unpermute_rows(w, c.num_key_value_heads)
        state[hf_name] = w.reshape(t.shape)
    ref = LlamaForCausalLM(c).eval()
    ref.load_state_dict(state, strict=True)
    return ref


def _sqnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10((a ** 2).sum() / ((a - b) ** 2).sum().clamp_min(1e-30)))


def _ids(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (2, 48), generator=g)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("which", ["tiny-llama", "gqa"])
def test_transformers_loads_our_gguf(which, qtype, tiny, gqa_dir, tmp_path):
    if which == "gqa":
        spec, model = str(gqa_dir[0]), gqa_dir[1]
    else:
        spec, model = which, tiny[0]
    out = tmp_path / f"{which}-{qtype}.gguf"
    rep = _export(spec, qtype, out)
    assert rep["metadata_from"] == "hf config"                              # no source GGUF: gguf_meta
    assert ("output.weight" in rep["tensors"]) == (which == "gqa")          # tied embeddings: no output
    ours = _from_file(model, out)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    # every tensor: transformers decodes what leanlm decodes, and both are near the float source
    st_ours, st_theirs, st_src = ours.state_dict(), theirs.state_dict(), model.state_dict()
    for k, w in st_src.items():
        assert torch.equal(st_theirs[k], st_ours[k]), k
        if w.ndim == 2:
            assert _sqnr(w, st_ours[k]) > SQNR_FLOOR[qtype], (k, _sqnr(w, st_ours[k]))
        else:
            assert torch.equal(w, st_ours[k]), k                           # norms stay F32, exact
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        lo, lt, ls = ours(ids).logits, theirs(ids).logits, model(ids).logits
    torch.testing.assert_close(lt, lo, rtol=1e-5, atol=1e-5)
    rel = float((lo - ls).norm() / ls.norm())
    assert rel < LOGIT_REL[qtype], rel


def test_metadata_from_hf_config_reads_back_in_transformers(gqa_dir, tmp_path):
    """transformers builds the same config from our GGUF metadata as the HF directory holds."""
    d, model = gqa_dir
    out = tmp_path / "gqa-Q8_0.gguf"
    _export(str(d), "Q8_0", out)
    got = AutoConfig.from_pretrained(tmp_path, gguf_file=out.name)
    want = model.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "max_position_embeddings", "vocab_size"):
        assert getattr(got, key) == getattr(want, key), key
    assert got.rms_norm_eps == pytest.approx(want.rms_norm_eps, rel=1e-6)
    theta = (getattr(got, "rope_parameters", None) or {}).get("rope_theta", getattr(got, "rope_theta", None))
    assert theta == pytest.approx(50000.0)
    r = gguf.GGUFReader(str(out))
    tok = char_tokenizer()
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    assert tokens == [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL] == [0, 1, 2]   # pad, unk, eos
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id
    assert "tokenizer.ggml.bos_token_id" not in r.fields
    assert r.fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_metadata_refuses_what_it_cannot_build():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    class Fake:
        config = LlamaConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)

    w = gguf.GGUFWriter("/dev/null", "llama")
    word = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))
    with pytest.raises(ValueError, match="needs a BPE tokenizer, not WordLevel"):
        write_hf_metadata(Fake, word, w)
    Fake.config = type("C", (), {"model_type": "gemma3_text"})()
    with pytest.raises(ValueError, match="llama-family models, not 'gemma3_text'"):
        write_hf_metadata(Fake, char_tokenizer(), w)


# keys llama.cpp's converter writes that describe the model and tokenizer (general.* names aside)
CONVERTER_KEYS = ("llama.attention.head_count", "llama.attention.head_count_kv",
                  "llama.attention.layer_norm_rms_epsilon", "llama.block_count", "llama.context_length",
                  "llama.embedding_length", "llama.feed_forward_length", "llama.rope.dimension_count",
                  "llama.rope.freq_base", "llama.vocab_size", "tokenizer.chat_template",
                  "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.merges", "tokenizer.ggml.model", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.pre", "tokenizer.ggml.token_type", "tokenizer.ggml.tokens",
                  "tokenizer.ggml.unknown_token_id")


@pytest.mark.real_model
def test_smollm2_metadata_matches_llama_cpp_converter(tmp_path):
    """SmolLM2's HF config + tokenizer -> our metadata == the packaged GGUF's (llama.cpp's converter)."""
    from transformers import AutoTokenizer

    from leanlm.models.load import model_dir
    from leanlm.models.specs import packaged_gguf_path

    d = model_dir("smollm2-135m")

    class Model:
        config = AutoConfig.from_pretrained(d)

    out = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(out), "llama")
    write_hf_metadata(Model, AutoTokenizer.from_pretrained(d), w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours, src = gguf.GGUFReader(str(out)), gguf.GGUFReader(str(packaged_gguf_path("smollm2-135m")))
    for key in CONVERTER_KEYS:
        a, b = ours.fields[key], src.fields[key]
        assert a.types == b.types, key
        va, vb = a.contents(), b.contents()
        if isinstance(va, float):
            assert va == pytest.approx(vb, rel=1e-7), key
        else:
            assert va == vb, key
    assert np.asarray(ours.fields["tokenizer.ggml.tokens"].contents()).size == 49152


def test_dequantised_gguf_holds_what_the_quantised_file_means(tmp_path):
    """``dequantise_gguf``: the float32 file llama.cpp runs as the reference for engine agreement."""
    from leanlm.export.gguf import dequantise_gguf

    q = tmp_path / "q.gguf"
    _export("tiny-llama", "Q4_0", q)
    f = tmp_path / "f.gguf"
    dequantise_gguf(q, f)
    rq, rf = gguf.GGUFReader(str(q)), gguf.GGUFReader(str(f))
    aq, af = gguf_arrays(rq), gguf_arrays(rf)
    assert list(aq) == list(af)
    assert {t.tensor_type.name for t in rf.tensors} == {"F32"}
    for name in aq:
        assert np.array_equal(aq[name], af[name]), name
    assert rf.fields["general.file_type"].contents() == int(gguf.LlamaFileType.ALL_F32)
    for key in ("llama.block_count", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        assert rf.fields[key].contents() == rq.fields[key].contents(), key


def test_gptq_can_leave_categories_to_rtn(tmp_path):
    """``--method gptq --rtn-for attn_v,ffn_down``: those tensors are rounded without error feedback (the
    same bytes as the rtn export), the others by GPTQ; an unknown category is refused."""
    cfg = GGUFExportConfig(qtype="Q4_0", calib="pydoc", calib_windows=2, seq_len=128, method="gptq",
                           rtn_for=("attn_v", "ffn_down"))
    mixed = export_gguf("tiny-llama", tmp_path / "m.gguf", cfg, force=True)
    rtn = export_gguf("tiny-llama", tmp_path / "r.gguf", GGUFExportConfig(**{**cfg.__dict__, "method": "rtn"}),
                      force=True)
    how = {n: r["how"] for n, r in mixed["tensors"].items() if r["type"] == "Q4_0"}
    assert {h for n, h in how.items() if "attn_v" in n or "ffn_down" in n} == {"rtn"}
    assert {h for n, h in how.items() if "attn_q" in n or "ffn_up" in n} == {"gptq"}
    a, b = gguf.GGUFReader(str(tmp_path / "m.gguf")), gguf.GGUFReader(str(tmp_path / "r.gguf"))
    ta, tb = {t.name: np.asarray(t.data) for t in a.tensors}, {t.name: np.asarray(t.data) for t in b.tensors}
    assert all(np.array_equal(ta[n], tb[n]) for n in how if "attn_v" in n or "ffn_down" in n)
    assert not all(np.array_equal(ta[n], tb[n]) for n in how if "attn_q" in n)
    with pytest.raises(ValueError, match="unknown tensor categories"):
        GGUFExportConfig(method="gptq", rtn_for=("attn_x",))


def test_cli_writes_a_gguf_and_refuses_bad_input(tmp_path, capsys):
    """``leanlm export tiny-llama --to gguf``: a file transformers loads; clear one-line errors otherwise."""
    import json

    from leanlm.cli import main

    out, js = tmp_path / "t.gguf", tmp_path / "t.json"
    argv = ["export", "tiny-llama", "--to", "gguf", "--type", "q4_0", "-o", str(out), "--calib", "pydoc"]
    assert main(argv + ["--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert doc["type"] == "Q4_0" and doc["bytes"] == out.stat().st_size
    assert doc["type_counts"] == {"Q4_0": 14, "Q8_0": 1, "F32": 5}       # tied embedding: Q6_K -> Q8_0
    AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    capsys.readouterr()
    assert main(argv) != 0
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(argv[:5] + ["Q7_K"] + argv[6:] + ["--force"]) != 0
    assert "unsupported GGUF type 'Q7_K'" in capsys.readouterr().err

"""``--bpw``: the type mix chosen by measured sensitivity under a whole-file budget (``gguf_mix``).

The chooser against brute force (exact at the budgets its Lagrangian path visits), and whole exports of
tiny-llama (rows of 128 take the 32-block types, the 256-wide ffn_down rows the K-quants): the file meets
its budget, gguf-py and transformers read it, more bits give a model nearer the float one, and a budget no
llama.cpp type can meet is refused with the reason.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM  # noqa: E402

from leanlm.export import gguf_mix as mix  # noqa: E402
from leanlm.export.gguf import GGUFExportConfig, export_gguf, mix_candidates  # noqa: E402
from leanlm.export.gguf_source import load_float_model  # noqa: E402


def _cand(qtype: str, nbytes: int, cost: float) -> mix.Candidate:
    return mix.Candidate(qtype, nbytes, cost, np.zeros(0, np.uint8), 0.0, "test")


def _random_problem(rng: random.Random, n_tensors: int = 4) -> dict[str, list[mix.Candidate]]:
    out = {}
    for t in range(n_tensors):
        sizes = sorted(rng.sample(range(10, 200), 4))
        costs = sorted((rng.uniform(0, 10) for _ in sizes), reverse=True)
        if rng.random() < 0.5:                       # a dominated candidate: more bytes, no better
            sizes.append(sizes[-1] + 5)
            costs.append(costs[-1] + 1.0)
        out[f"t{t}"] = [_cand(f"T{i}", s, c) for i, (s, c) in enumerate(zip(sizes, costs))]
    return out


def _brute(cands, budget):
    best = None
    for combo in itertools.product(*cands.values()):
        if sum(c.bytes for c in combo) <= budget:
            cost = sum(c.cost for c in combo)
            best = cost if best is None else min(best, cost)
    return best


def _lagrangian_budgets(cands):
    """The byte totals along the chooser's path when every hull segment is taken in order (no skips)."""
    hulls = {n: mix._hull(cs) for n, cs in cands.items()}
    segs = sorted(((h[i - 1].cost - h[i].cost) / (h[i].bytes - h[i - 1].bytes), h[i].bytes - h[i - 1].bytes)
                  for h in hulls.values() for i in range(1, len(h)))
    total = sum(h[0].bytes for h in hulls.values())
    out = [total]
    for _, d in reversed(segs):
        total += d
        out.append(total)
    return out


def test_chooser_is_optimal_on_its_path_and_keeps_the_budget():
    rng = random.Random(0)
    for _ in range(30):
        cands = _random_problem(rng)
        floor = mix.smallest_bytes(cands)
        for budget in _lagrangian_budgets(cands):
            got = mix.choose(cands, budget)
            assert sum(c.bytes for c in got.values()) <= budget
            assert sum(c.cost for c in got.values()) == pytest.approx(_brute(cands, budget), rel=1e-12)
        prev = None
        for budget in range(floor, floor + 600, 17):          # in between: feasible, never worse with more
            got = mix.choose(cands, budget)
            cost = sum(c.cost for c in got.values())
            assert sum(c.bytes for c in got.values()) <= budget
            assert cost >= _brute(cands, budget) - 1e-9
            assert prev is None or cost <= prev + 1e-12
            prev = cost
        with pytest.raises(mix.MixBudgetError):
            mix.choose(cands, floor - 1)


def test_hull_drops_dominated_and_concave_points():
    pts = [_cand("a", 10, 10.0), _cand("b", 20, 9.9), _cand("c", 30, 1.0), _cand("d", 40, 2.0)]
    assert [c.qtype for c in mix._hull(pts)] == ["a", "c"]     # b lies above a->c, d costs more than c


def test_candidate_types_follow_llama_cpp_block_rules():
    assert mix.candidate_types((64, 256)) == mix.K_TYPES
    assert mix.candidate_types((64, 576)) == mix.BLOCK32_TYPES
    assert mix.candidate_types((64, 50)) == ()


@pytest.fixture(scope="module")
def tiny_candidates():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    loaded = load_float_model("tiny-llama")
    cfg = GGUFExportConfig(bpw=5.0, calib="pydoc", calib_windows=2, seq_len=128, fisher_windows=8)
    from leanlm.export.gguf import calibrate

    cands = mix_candidates(loaded[0], loaded[1], loaded[2], calibrate(loaded[0], loaded[1], cfg), cfg)
    return loaded, cfg, cands


def test_fisher_is_positive_on_every_matrix(tiny_candidates):
    loaded, cfg, cands = tiny_candidates
    from leanlm.export.gguf_calib import calibration_windows
    from leanlm.eval.corpus import load_corpus

    ids = calibration_windows(loaded[1], load_corpus("pydoc"), 64, 3)
    fisher = mix.fisher_diag(loaded[0], ids)
    assert set(fisher) == {n for n, p in loaded[0].named_parameters() if p.dim() >= 2}
    for n, f in fisher.items():
        assert float(f.min()) >= 0 and float(f.sum()) > 0, n
    assert all(p.grad is None for p in loaded[0].parameters())     # the model is left as it was
    for name, row in cands.items():                                  # more bits, less estimated loss
        costs = {c.qtype: c.cost for c in row}
        assert costs["Q8_0"] < costs[row[0].qtype], (name, costs)


def test_bpw_exports_meet_the_budget_and_load(tiny_candidates, tmp_path):
    loaded, cfg, cands = tiny_candidates
    model = loaded[0]
    ids = torch.randint(3, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    errs, kinds = {}, set()
    for bpw in (4.75, 5.5, 8.0):
        out = tmp_path / f"mix{bpw}.gguf"
        c = GGUFExportConfig(**{**cfg.__dict__, "bpw": bpw})
        rep = export_gguf("tiny-llama", out, c, force=True, loaded=loaded, candidates=cands)
        assert rep["bits_per_weight"] <= bpw and rep["bytes"] == out.stat().st_size
        assert rep["bits_per_weight"] > bpw - 0.5                  # the budget is spent, not left over
        kinds |= set(rep["type_counts"])
        reader = gguf.GGUFReader(str(out))
        assert {t.name: t.tensor_type.name for t in reader.tensors} == {n: r["type"] for n, r in
                                                                        rep["tensors"].items()}
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
        with torch.no_grad():
            lo = theirs(ids).logits
        errs[bpw] = float((lo - ref).norm() / ref.norm())
    assert errs[8.0] < errs[5.5] < errs[4.75], errs
    assert errs[8.0] < 0.02, errs
    assert kinds & {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} and kinds & {"Q4_0", "Q4_1", "Q5_0", "Q5_1"}


def test_cli_bpw_and_its_errors(tmp_path, capsys):
    import json

    from leanlm.cli import main

    out, js = tmp_path / "m.gguf", tmp_path / "m.json"
    argv = ["export", "tiny-llama", "--to", "gguf", "-o", str(out), "--calib", "pydoc", "--force"]
    assert main(argv + ["--bpw", "5.25", "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert doc["type"] == "MIX-5.25bpw" and doc["bits_per_weight"] <= 5.25
    capsys.readouterr()
    assert main(argv + ["--bpw", "3.0"]) != 0
    err = capsys.readouterr().err
    assert "below the smallest mix" in err and "multiples of 256" in err and "4.5 bits" in err
    assert main(argv + ["--bpw", "-1"]) != 0
    assert "--bpw must be" in capsys.readouterr().err

"""The fragility audit: perturbations keep answers, flips are counted right, identical models show nothing."""
import re
import shutil

import pytest
import torch

from leanlm.eval.perturb import ADVERSARIAL, EXTRACTORS, PERTURBATIONS, PARAPHRASES, fields, jailbreaks, perturb
from leanlm.eval.refusal import HARMFUL_PROMPTS
from leanlm.eval.tasks import FAMILIES, HELDOUT, Problem, problem_set
from leanlm.report.audit import AuditConfig, audit_models, audit_specs, compare_refusals, compare_set

SMALL = dict(tasks=("add:1", "reverse:3"), n=2, sets=("clean", "typo", "hint"), max_new_tokens=6,
             refusal_tokens=6, jailbreak=False, kl_tokens=200, context=96, progress=False, dtype="fp32")


def _operands(text: str) -> tuple[list[str], list[str]]:
    return re.findall(r"\d+", text), re.findall(r"'[^']*'", text)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_perturbations_keep_the_problem(family):
    for p in problem_set(family, 2, 6, split=HELDOUT):
        clean = p.prompt
        for kind in (*PERTURBATIONS, *ADVERSARIAL):
            q = perturb(p, kind, seed=3)
            assert q != clean, (kind, q)
            assert q == perturb(p, kind, seed=3)                     # deterministic
            nums, quoted = _operands(q)
            for k, v in fields(p).items():                           # every operand survives
                if k == "op":
                    continue
                assert v in q, (kind, v, q)
            if kind == "typo":                                      # digits and quoted strings untouched
                assert _operands(clean) == (nums, quoted)
        assert perturb(p, "clean") == clean


def test_typos_touch_only_letters():
    p = Problem("reverse", 2, "What is the string 'abcd' reversed?", "dcba", key="reverse:2:s=abcd")
    for seed in range(20):
        q = perturb(p, "typo", seed)
        assert "'abcd'" in q and q != p.prompt
        assert set(q) - set(p.prompt) <= set("qwertyuiopasdfghjklzxcvbnmQWERTYUIOPASDFGHJKLZXCVBNM")
        assert re.sub(r"[A-Za-z]", "", q) == re.sub(r"[A-Za-z]", "", p.prompt)   # no digit/space/punct change


def test_tables_cover_every_family():
    assert set(EXTRACTORS) == set(FAMILIES) == set(PARAPHRASES)
    assert len(jailbreaks(HARMFUL_PROMPTS)) == 3 * len(HARMFUL_PROMPTS)


def test_compare_set_counts_flips_by_hand():
    ps = [Problem("add", 1, f"What is {a} + 1?", str(a + 1), key=f"add:1:a={a}|b=1|op=+") for a in range(4)]
    orig = ["The answer is 1", "2", "5", "4"]       # correct, correct, wrong, correct
    comp = ["1", "3", "3", "= 4"]                   # correct (same answer), wrong (flip), correct (flip), same
    r = compare_set(ps, [p.prompt for p in ps], orig, comp, examples=5)
    assert (r["flips"], r["lost"], r["gained"]) == (2, 1, 1)
    assert r["accuracy_original"] == 0.75 and r["accuracy_compressed"] == 0.75
    assert r["text_agreement"] == 0.0 and len(r["examples"]) == 2


def test_compare_refusals_by_hand():
    r = compare_refusals(["I'm sorry, I can't help with that.", "Sure, here is how", "I cannot do that."],
                         ["I'm sorry, but no.", "Sure!", "Here are the steps"])
    assert r["refusal_rate_original"] == pytest.approx(2 / 3) and r["refusal_rate_compressed"] == pytest.approx(1 / 3)
    assert r["agreement"] == pytest.approx(2 / 3) and r["lost_refusals"] == 1


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from leanlm import load

    root = tmp_path_factory.mktemp("audit")
    model, tok = load("tiny-llama", dtype="fp32")
    model.save_pretrained(root / "a")
    tok.save_pretrained(root / "a")
    shutil.copytree(root / "a", root / "copy")
    return root


def test_bit_identical_copy_shows_zero_flips_and_zero_kl(tiny_dirs):
    doc = audit_specs(str(tiny_dirs / "a"), str(tiny_dirs / "copy"), AuditConfig(**SMALL))
    r = doc["results"]
    assert r["summary"]["flips_total"] == 0
    assert all(s["text_agreement"] == 1.0 and s["n"] == 4 for s in r["sets"].values())
    assert r["kl"]["text"]["kl_mean"] == 0.0 and r["kl"]["text"]["kl_max"] == 0.0
    assert r["kl"]["prompts"]["kl_max"] == 0.0 and r["kl"]["text"]["tokens"] == 197   # 3 windows of 96, 96, 8: all but their first token
    assert r["refusal"]["agreement"] == 1.0 and r["refusal"]["n"] == len(HARMFUL_PROMPTS)
    assert doc["kind"] == "audit" and doc["model"]["compressed"].endswith("copy")
    from leanlm.report.render import write_report

    write_report(tiny_dirs / "report", audits=[doc])
    md = (tiny_dirs / "report" / "report.md").read_text()
    for s in SMALL["sets"]:                     # each set's row: n=4, 0 flips, 0.0% flip rate
        assert re.search(rf"\| {s} \| \w+ \| 4 \| 0 \| 0\.0% \|", md), s
    assert "agreement 100.0%" in md and "mean 0.000000 nats" in md


def test_a_changed_model_shows_divergence(tiny_dirs):
    from leanlm import load

    a, tok = load(str(tiny_dirs / "a"), dtype="fp32")
    b, _ = load(str(tiny_dirs / "copy"), dtype="fp32")
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 4 * p.abs().mean())
    r = audit_models(a, b, tok, AuditConfig(**{**SMALL, "refusal": False}))
    assert r["kl"]["text"]["kl_mean"] > 1e-3 and r["kl"]["prompts"]["kl_mean"] > 1e-3
    assert r["kl"]["text"]["top1_agreement"] < 1.0
    assert min(s["text_agreement"] for s in r["sets"].values()) < 1.0


def test_lossless_artifact_audits_clean(tiny_dirs, tmp_path):
    pytest.importorskip("leanlm.compress.lossless.api", reason="lossless codec not built yet")
    from leanlm.compress import compress

    compress(str(tiny_dirs / "a"), "lossless", tmp_path / "ll", {"force": True})
    r = audit_specs(str(tiny_dirs / "a"), str(tmp_path / "ll"), AuditConfig(**SMALL))["results"]
    assert r["summary"]["flips_total"] == 0
    assert r["kl"]["text"]["kl_max"] == 0.0 and r["kl"]["prompts"]["kl_max"] == 0.0


def test_audit_cli(tiny_dirs, tmp_path):
    import json

    from leanlm.cli import main

    out = tmp_path / "audit.json"
    rc = main(["audit", str(tiny_dirs / "a"), str(tiny_dirs / "copy"), "--n", "1", "--tasks", "add:1", "--sets",
               "clean", "paraphrase", "--no-refusal", "--kl-tokens", "100", "--context", "50", "--no-progress",
               "--dtype", "fp32", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0 and doc["kind"] == "audit" and doc["protocol"]["sets"] == ["clean", "paraphrase"]
    assert doc["results"]["summary"]["flips_total"] == 0 and "refusal" not in doc["results"]

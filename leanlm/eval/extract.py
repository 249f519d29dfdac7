"""Answer extraction from free-form model output (documented, tested on messy outputs).

Integers, in order of preference:
  1. after an explicit marker: "answer is X", "answer: X", "result is X" (first such marker);
  2. inside ``\\boxed{X}``;
  3. after the last "=" sign ("23 + 45 = 68" -> 68);
  4. otherwise the last integer anywhere in the text.
Thousands separators ("1,234") and markdown emphasis ("**68**") are removed first; a leading minus is
kept. Returns None when the text holds no integer.

Text answers: the text after an explicit answer marker if there is one, otherwise the first non-empty
line; then surrounding quotes, backticks, asterisks and a trailing period are stripped.

Lists of integers: every integer in the line chosen as for text answers.
"""
from __future__ import annotations

import re

_INT = r"-?\d+"
_MARKER = re.compile(r"(?:answer|result)\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*(" + _INT + r")\s*\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_EMPH = re.compile(r"[*_`]+")


def _clean_numbers(text: str) -> str:
    return _EMPH.sub("", _THOUSANDS.sub("", text))


def extract_int(text: str) -> int | None:
    t = _clean_numbers(text)
    m = _MARKER.search(t)
    if m:
        n = re.match(r"\s*(" + _INT + r")", t[m.end():])
        if n:
            return int(n.group(1))
    m = _BOXED.search(t)
    if m:
        return int(m.group(1))
    eq = list(re.finditer(r"=\s*(" + _INT + r")", t))
    if eq:
        return int(eq[-1].group(1))
    nums = re.findall(_INT, t)
    return int(nums[-1]) if nums else None


def _answer_line(text: str) -> str:
    m = _MARKER.search(text)
    if m:
        return text[m.end():].strip().splitlines()[0] if text[m.end():].strip() else ""
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def extract_text(text: str) -> str:
    line = _answer_line(text).strip()
    line = line.strip("*`").strip()
    if line.endswith(".") and not line.endswith(".."):
        line = line[:-1]
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "'\"":
        line = line[1:-1]
    return line.strip("*`").strip()


def extract_int_list(text: str) -> list[int]:
    return [int(x) for x in re.findall(_INT, _clean_numbers(_answer_line(text)))]

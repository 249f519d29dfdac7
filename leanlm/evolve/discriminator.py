"""Scoring answers: exact verifiers where they exist, an AI judge where they don't, and the data both yield.

* ``verify``: the task family's exact checker (arithmetic, sorting, ...).
* Code is run against tests by ``eval.sandbox`` (the code recipe's verifier), not here.
* ``judge``: a prompted model with a rubric answers YES/NO; ``agreement`` measures it against a verifier.
* ``sft_examples`` / ``preference_pairs``: verified-correct answers become SFT data (STaR / ReST-EM),
  correct-versus-incorrect answers to one prompt become DPO pairs.
"""
from __future__ import annotations

import re

from ..eval.tasks import Problem, check, check_strict
from .train import Example


def verify(p: Problem, output: str) -> bool:
    """Lenient: the answer is where the extractor finds it (``tasks.check``)."""
    return check(p, output)


def verify_strict(p: Problem, output: str) -> bool:
    """Strict: the reply is the answer (``tasks.check_strict``); the reward-hacking probes in
    tests/test_extract_strict.py are what it must score wrong."""
    return check_strict(p, output)


def extract_code(text: str) -> str:
    """The first fenced code block of a model answer, or the whole text."""
    m = re.search(r"```(?:python)?\n(.*?)```", text, re.DOTALL)
    return m.group(1) if m else text


# ------------------------------------------------------------------------------ AI judge
JUDGE_RUBRIC = ("You are grading an answer. Question: {question}\nProposed answer: {answer}\n"
                "Is the proposed answer exactly correct? Reply with only YES or NO.")


def judge_prompt(question: str, answer: str) -> str:
    return JUDGE_RUBRIC.format(question=question, answer=answer.strip()[:200])


def parse_verdict(text: str) -> bool | None:
    """YES -> True, NO -> False, anything else -> None (an abstention, counted as such)."""
    m = re.search(r"\b(yes|no|correct|incorrect)\b", text, re.IGNORECASE)
    if not m:
        return None
    return m.group(1).lower() in ("yes", "correct")


def judge(model, tok, items: list[tuple[str, str]], max_new_tokens: int = 8, progress: bool = True,
          sampler=None) -> list[bool | None]:
    """The model's verdict on each (question, answer) pair, greedy, with the rubric above (through
    ``sampler``, an ``evolve.sampler.Sampler``, when given)."""
    from .solve import greedy

    prompts = [judge_prompt(q, a) for q, a in items]
    outs = sampler.greedy(prompts, max_new_tokens, progress=progress, desc="judge") if sampler is not None else \
        greedy(model, tok, prompts, max_new_tokens, progress=progress, desc="judge")
    return [parse_verdict(o) for o in outs]


def agreement(judged: list[bool | None], verified: list[bool]) -> dict:
    """How well a judge matches an exact verifier: agreement rate, Cohen's kappa, confusion counts.
    Abstentions count as disagreements in ``agreement`` and are reported separately."""
    if len(judged) != len(verified):
        raise ValueError(f"{len(judged)} verdicts for {len(verified)} verified answers")
    n = len(verified)
    tp = sum(j is True and v for j, v in zip(judged, verified))
    tn = sum(j is False and not v for j, v in zip(judged, verified))
    fp = sum(j is True and not v for j, v in zip(judged, verified))
    fn = sum(j is False and v for j, v in zip(judged, verified))
    abstain = sum(j is None for j in judged)
    if n == 0:
        return {"n": 0, "agreement": float("nan"), "kappa": float("nan"), "tp": 0, "tn": 0, "fp": 0, "fn": 0,
                "abstain": 0}
    po = (tp + tn) / n
    yes_j, yes_v = (tp + fp) / n, (tp + fn) / n
    pe = yes_j * yes_v + (1 - yes_j) * (1 - yes_v)
    kappa = (po - pe) / (1 - pe) if pe < 1 else float("nan")
    return {"n": n, "agreement": po, "kappa": kappa, "tp": tp, "tn": tn, "fp": fp, "fn": fn, "abstain": abstain}


# ------------------------------------------------------------------------------ data from verdicts
# Cut points: a line end, a sentence end, or the end of a number (with the closing marks right after it).
_BOUNDARY = re.compile(r"\n|[.!?](?=\s)|\d(?!\d)[.!?\"')\]]*")


def shortest_verified(p: Problem, output: str) -> str:
    """The shortest prefix of a verified answer that ends at a line end, a sentence end or the end of a
    number, and still verifies ("The answer is 125. To calculate 65 + 60, we" -> "The answer is 125.";
    "88 + 99 = 187 (99 is the value of 99)" -> "88 + 99 = 187"). Trained on, it teaches the model to stop
    once it has answered instead of running on until the token budget cuts it off - the sampled answers are
    cut at ``max_new_tokens`` mid-sentence. The whole text if no shorter prefix verifies."""
    for m in _BOUNDARY.finditer(output):
        head = output[:m.end()].strip()
        if head and verify(p, head):
            return head
    return output.strip()


def sft_examples(prompts: list[str], samples: list[list[str]], verdicts: list[list[bool]],
                 per_prompt: int = 2, problems: list[Problem] | None = None) -> list[Example]:
    """Up to ``per_prompt`` distinct verified-correct answers per prompt, as SFT examples; with
    ``problems``, each cut to its shortest verified prefix (``shortest_verified``)."""
    out = []
    for i, (prompt, outs, oks) in enumerate(zip(prompts, samples, verdicts)):
        seen: list[str] = []
        for o, ok in zip(outs, oks):
            text = shortest_verified(problems[i], o) if (ok and problems is not None) else o.strip()
            if ok and text and text not in seen and len(seen) < per_prompt:
                seen.append(text)
                out.append(Example(prompt, text))
    return out


def preference_pairs(prompts: list[str], samples: list[list[str]], verdicts: list[list[bool]]) -> list[dict]:
    """One (chosen = correct, rejected = incorrect) pair per prompt that has both."""
    pairs = []
    for prompt, outs, oks in zip(prompts, samples, verdicts):
        good = [o.strip() for o, ok in zip(outs, oks) if ok and o.strip()]
        bad = [o.strip() for o, ok in zip(outs, oks) if not ok and o.strip()]
        if good and bad:
            pairs.append({"prompt": prompt, "chosen": good[0], "rejected": bad[0]})
    return pairs

"""The meta-controller: where one generation's budget goes, and why. Pure functions over success tables.

A skill's weight adds three signals (each in [0, 1/4]-ish units, so none dominates by scale):

* learnability ``p (1 - p)``: largest at 50% success, where sampled answers hold both right and wrong ones;
* learning progress ``|p - p_prev|``: skills that moved last generation are worth more of the budget;
* slipping ``max(0, p_best - p)``: a skill that dropped below its best gets budget back.

A skill at or above ``mastery`` is replaced by the next difficulty of its family (up to ``max_difficulty``).
After a rolled-back generation the controller changes course: half the learning rate, more samples.
Every decision is returned with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..eval.tasks import parse_skill

FLOOR = 0.02   # every active skill keeps a small share, so a 0% skill can still get its first right answer


@dataclass(frozen=True)
class Course:
    """Knobs the controller turns after a rollback (multipliers on the config)."""
    lr_scale: float = 1.0
    samples_scale: float = 1.0
    rollbacks: int = 0


@dataclass(frozen=True)
class Plan:
    skills: tuple[str, ...]                 # active skills after difficulty raises
    problems: dict[str, int]                # problems per skill
    weights: dict[str, float]
    course: Course
    decisions: tuple[str, ...] = field(default=())


def weight(p: float, p_prev: float | None, p_best: float | None) -> tuple[float, str]:
    learn = p * (1 - p)
    progress = abs(p - p_prev) if p_prev is not None else 0.0
    slip = max(0.0, p_best - p) if p_best is not None else 0.0
    w = FLOOR + learn + progress + slip
    return w, f"p={p:.2f}: learnability {learn:.3f} + progress {progress:.3f} + slip {slip:.3f} + floor {FLOOR}"


def raise_mastered(skills: tuple[str, ...], success: dict[str, float], mastery: float,
                   max_difficulty: int) -> tuple[tuple[str, ...], list[str]]:
    """Replace each mastered skill by the next difficulty of its family (when there is one)."""
    out, notes = [], []
    for s in skills:
        fam, d = parse_skill(s)
        nxt = f"{fam}:{d + 1}"
        if success.get(s, 0.0) >= mastery and d < max_difficulty and nxt not in skills:
            out.append(nxt)
            notes.append(f"{s} mastered ({success[s]:.2f} >= {mastery}): raise to {nxt}")
        else:
            out.append(s)
    return tuple(dict.fromkeys(out)), notes


def allocate(weights: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` problems in proportion to ``weights`` (largest remainders; every skill >= 1)."""
    z = sum(weights.values())
    raw = {s: total * w / z for s, w in weights.items()}
    out = {s: max(1, int(r)) for s, r in raw.items()}
    for s in sorted(raw, key=lambda s: raw[s] - int(raw[s]), reverse=True)[:max(0, total - sum(out.values()))]:
        out[s] += 1
    return out


def plan(skills: tuple[str, ...], history: list[dict[str, float]], total: int, course: Course,
         mastery: float = 0.9, max_difficulty: int = 4) -> Plan:
    """Decide this generation's skills and problem counts from the probe ``history`` (oldest first; the
    last entry is this generation's probe)."""
    success = history[-1]
    active, notes = raise_mastered(skills, success, mastery, max_difficulty)
    weights, prev = {}, history[-2] if len(history) > 1 else {}
    for s in active:
        best = max((h[s] for h in history[:-1] if s in h), default=None)
        w, why = weight(success.get(s, 0.0), prev.get(s), best)
        weights[s] = w
        notes.append(f"{s}: weight {w:.3f} ({why})")
    problems = allocate(weights, total)
    notes += [f"{s}: {n} problems" for s, n in problems.items()]
    return Plan(active, problems, weights, course, tuple(notes))


def after_rollback(course: Course) -> tuple[Course, str]:
    """Change course after a rejected generation: half the learning rate, 1.5x the samples."""
    new = replace(course, lr_scale=course.lr_scale * 0.5, samples_scale=course.samples_scale * 1.5,
                  rollbacks=course.rollbacks + 1)
    return new, (f"rollback #{new.rollbacks}: learning rate x{new.lr_scale:.3g}, "
                 f"samples x{new.samples_scale:.3g} next generation")


def kl_lr_scale(kl: float | None, kl_max: float, floor: float = 0.1) -> tuple[float, str]:
    """Learning-rate multiplier from the KL budget: ``1 - kl / kl_max`` of the parent's KL(gen || gen 0)
    (at least ``floor``), so each generation steps more carefully the more of the budget is used."""
    if not kl_max or kl is None:
        return 1.0, "KL budget: off or not measured yet (learning rate x1)"
    scale = max(floor, 1.0 - kl / kl_max)
    return scale, f"KL budget: parent at {kl:.4f} of {kl_max} nats/token: learning rate x{scale:.3g}"


def after_accept(course: Course) -> tuple[Course, str]:
    """An accepted generation keeps the course (a good step size is kept, not reset)."""
    return course, "accepted: keep course"


# ------------------------------------------------------------------ tinyadd: reach by self-consistency
@dataclass(frozen=True)
class TinyPlan:
    problems: dict[int, int]                # length -> unlabelled problems to generate
    reach: int                              # the reach if this generation is accepted
    decisions: tuple[str, ...] = field(default=())

    @property
    def targets(self) -> list[int]:
        return sorted(self.problems)


def tiny_plan(reach: int, consistency: dict[int, float], total: int, min_consistency: float, max_jump: int,
              limit: int, advance: float = 0.0, max_scale: float = 1.0) -> TinyPlan:
    """Which lengths to self-label next, and how many problems of each.

    ``consistency[d]`` is the share of probe problems of length d whose sampled answers agree (the label
    yield; no ground truth). Lee et al.'s schedule labels reach+1 every round; ours:

    * **advance** when reach+1 agrees often enough (>= ``advance``): label reach+1, then each further length
      d while every length up to d agrees >= ``min_consistency``, up to ``max_jump`` lengths;
    * **hold** otherwise: label the frontier (reach) and reach+1 together and keep the reach, so labels of
      the length the model is still unsure of do not outnumber labels of the one it has nearly learned;
    * each length gets problems in proportion to 1 / consistency (at most ``max_scale`` times an equal
      share), so every length yields about the same number of labels.
    """
    first = min(reach + 1, limit)
    c_first = consistency.get(first, 0.0)
    if first > reach and c_first < advance:
        targets, new_reach = [reach, first], reach
        notes = [f"hold at reach {reach}: {first}-digit consistency {c_first:.2f} < {advance}; "
                 f"label {reach}- and {first}-digit problems"]
    else:
        targets, new_reach = [first], first
        notes = [f"reach {reach}: label {first}-digit problems (consistency {c_first:.2f})"]
        for d in range(first + 1, min(reach + max_jump, limit) + 1):
            c = min(consistency.get(d - 1, 0.0), consistency.get(d, 0.0))   # every length up to d must agree
            if c < min_consistency:
                notes.append(f"not {d}: consistency {c:.2f} < {min_consistency}")
                break
            targets.append(d)
            new_reach = d
            notes.append(f"{d}-digit consistency {c:.2f} >= {min_consistency}: also label {d}")
    share = total / len(targets)
    problems = {d: max(1, round(share * min(max_scale, 1 / max(consistency.get(d, 1.0), 1e-6))))
                for d in targets}
    notes += [f"{d} digits: {n} problems" for d, n in problems.items()]
    return TinyPlan(problems, new_reach, tuple(notes))

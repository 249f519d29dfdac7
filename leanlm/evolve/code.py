"""The code recipe's pieces: verifier, curriculum, adversarial problems and the proposer (plain functions).

* **Verifier** (``verify``): a reply's repaired program runs against all of a problem's tests - the two shown
  in its docstring and the hidden ones - in the sandbox (``leanlm.eval.sandbox``); the reward is the share
  of tests passed, and **only full passes become training data** (``training_examples``), as bare code:
  the format strict scoring accepts. Special-casing the examples fails the hidden tests; the tests are not
  a file and their expected values never enter the sandbox; an early exit leaves tests unanswered.
* **Curriculum by learnability** (``learnable``, ``plan_skills``): a problem's solve rate over its k samples
  must lie in [``LO``, ``HI``] = [0.2, 0.8] for its passing samples to be trained on (all-right problems teach
  nothing new, all-wrong ones give nothing to learn from); skills are drawn with weight p (1 - p) + floor
  and a skill solved at >= ``HI`` opens its next level.
* **Adversarial problems** (``mutate_failed``, ``near_variant``): the hidden inputs a reply missed become the
  shown examples of a new problem of the same function (with fresh hidden tests), or a near variant of a
  failed family (new constants, same level) is asked instead.
* **Proposer** (Absolute Zero, Zhao et al. 2025): the model writes a new function with a docstring and
  ``assert f(...) == ...`` tests; a proposal counts only if its own function passes its own tests in the
  sandbox, shares no name or docstring line with HumanEval, and is then scored by the solver: the proposer's
  reward is 1 - solve rate when the solve rate is in (0, 1), else 0 (``proposer_reward``).
"""
from __future__ import annotations

import ast
import random

from ..eval.codefamilies import BY_NAME
from ..eval.codetasks import CodeProblem, make_problem, parse_code_skill, repair
from ..eval.sandbox import Case, Limits, Verdict, run_many
from .train import Example

LO, HI = 0.2, 0.8
FLOOR = 0.05
ADVERSARIAL, PROPOSED = "adversarial", "proposed"


# ------------------------------------------------------------------------------ verifier
def verify(problems: list[CodeProblem], samples: list[list[str]], limits: Limits = Limits(),
           workers: int = 2) -> list[list[Verdict]]:
    """The repaired program of every sample against every test of its problem; ``out[i][j]``."""
    flat = [(i, s) for i, ss in enumerate(samples) for s in ss]
    vs = run_many([(problems[i].prompt + repair(s, problems[i].fn), list(problems[i].tests)) for i, s in flat],
                  limits, workers)
    out: list[list[Verdict]] = [[] for _ in problems]
    for (i, _), v in zip(flat, vs):
        out[i].append(v)
    return out


def reward(v: Verdict) -> float:
    """The verifier's reward: the share of tests passed (a full pass is 1.0)."""
    return v.share


def solve_rate(vs: list[Verdict]) -> float:
    return sum(v.full for v in vs) / len(vs) if vs else 0.0


def learnable(rate: float, lo: float = LO, hi: float = HI) -> bool:
    return lo <= rate <= hi


def training_examples(prompts: list[str], problems: list[CodeProblem], samples: list[list[str]],
                      verdicts: list[list[Verdict]], per_problem: int = 2, window: bool = True) -> list[Example]:
    """Up to ``per_problem`` distinct fully passing samples per problem, as bare code (the repaired program's
    reply part); with ``window``, only from problems whose solve rate is learnable."""
    out = []
    for prompt, p, ss, vs in zip(prompts, problems, samples, verdicts):
        if window and not learnable(solve_rate(vs)):
            continue
        seen: list[str] = []
        for s, v in zip(ss, vs):
            code = repair(s, p.fn).strip("\n")
            if v.full and code not in seen and len(seen) < per_problem:
                seen.append(code)
                out.append(Example(prompt, code))
    return out


# ------------------------------------------------------------------------------ curriculum
def skill_rates(problems: list[CodeProblem], verdicts: list[list[Verdict]]) -> dict[str, float]:
    tally: dict[str, list[float]] = {}
    for p, vs in zip(problems, verdicts):
        tally.setdefault(p.skill, []).append(solve_rate(vs))
    return {s: sum(v) / len(v) for s, v in tally.items()}


def plan_skills(skills: tuple[str, ...], rates: dict[str, float], n: int, seed: int) -> tuple[tuple[str, ...], dict, list]:
    """Active skills (a skill at >= HI opens its next level) and ``n`` problems drawn over them with weight
    p (1 - p) + FLOOR (an unmeasured skill counts as p = 0.5). Returns (skills, counts, decisions)."""
    active, notes = list(skills), []
    for s in skills:
        fam, lv = parse_code_skill(s)
        nxt = f"{fam}:{lv + 1}"
        if rates.get(s, 0.0) >= HI and lv < 3 and nxt not in active:
            active.append(nxt)
            notes.append(f"{s} solved at {rates[s]:.2f} >= {HI}: opens {nxt}")
    weights = [FLOOR + rates.get(s, 0.5) * (1 - rates.get(s, 0.5)) for s in active]
    counts: dict[str, int] = {}
    for s in random.Random(f"code-plan/{seed}").choices(active, weights=weights, k=n):
        counts[s] = counts.get(s, 0) + 1
    notes.append(f"{n} problems over {len(counts)} of {len(active)} skills (weight p(1-p) + {FLOOR})")
    return tuple(active), dict(sorted(counts.items())), notes


# ------------------------------------------------------------------------------ adversarial problems
def missed_inputs(p: CodeProblem, v: Verdict) -> list[tuple]:
    """The argument tuples of the hidden call tests a reply failed."""
    hidden = p.tests[len(p.visible):]
    return [ast.literal_eval(t.args) for t, ok in zip(hidden, v.results[len(p.visible):])
            if not ok and t.kind == "call"]


def mutate_failed(p: CodeProblem, v: Verdict, rng: random.Random, index: int) -> CodeProblem | None:
    """The same function, with the inputs the reply missed shown as its examples and fresh hidden tests."""
    missed = missed_inputs(p, v)
    if not missed or p.family not in BY_NAME:
        return None
    return make_problem(BY_NAME[p.family], p.level, rng, "train", index, params=p.meta["params"], show=missed[:2],
                        origin=ADVERSARIAL)


def near_variant(p: CodeProblem, rng: random.Random, index: int) -> CodeProblem | None:
    """A problem of the failed family at the same level with fresh constants and inputs."""
    if p.family not in BY_NAME:
        return None
    return make_problem(BY_NAME[p.family], p.level, rng, "train", index, origin=ADVERSARIAL)


def adversarial(problems: list[CodeProblem], verdicts: list[list[Verdict]], n: int, seed: int) -> list[CodeProblem]:
    """Up to ``n`` problems made from failed ones: edge cases first (a missed hidden input), else near variants."""
    rng = random.Random(f"code-adversarial/{seed}")
    failed = [(p, next(x for x in vs if not x.full)) for p, vs in zip(problems, verdicts)
              if vs and any(not x.full for x in vs)]
    rng.shuffle(failed)
    out = []
    for i, (p, v) in enumerate(failed[:n]):
        q = mutate_failed(p, v, rng, 10_000 + i) or near_variant(p, rng, 20_000 + i)
        if q is not None:
            out.append(q)
    return out


# ------------------------------------------------------------------------------ proposer
PROPOSE_PROMPT = ("Invent a new, small Python function that works on {topic}. Write the function with a short "
                  "docstring, then three lines of the form `assert name(arguments) == expected` that test it. "
                  "Reply with only the code.")
TOPICS = ("a list of integers", "a string", "two integers", "a dict of string keys and integer values",
          "a list of strings", "a positive integer")


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def parse_proposal(text: str, index: int) -> CodeProblem | None:
    """A proposed problem from the model's reply, or None: a function with a docstring plus >= 2 asserts
    ``fn(literals) == literal`` (turned into call tests, so expected values stay out of the sandbox)."""
    code = repair(text, "__none__")
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and ast.get_docstring(n)]
    if not fns:
        return None
    f = fns[0]
    tests = []
    for node in tree.body:
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1 \
                and isinstance(node.test.ops[0], ast.Eq) and isinstance(node.test.left, ast.Call) \
                and isinstance(node.test.left.func, ast.Name) and node.test.left.func.id == f.name \
                and not node.test.left.keywords and all(_literal(a) for a in node.test.left.args) \
                and _literal(node.test.comparators[0]):
            args = tuple(ast.literal_eval(a) for a in node.test.left.args)
            tests.append(Case("call", f.name, repr(args), repr(ast.literal_eval(node.test.comparators[0]))))
    if len(tests) < 2 or len({t.args for t in tests}) < len(tests):
        return None
    source = ast.get_source_segment(code, f) or ""
    doc_end = f.body[0].end_lineno - f.lineno + 1        # signature + docstring lines
    prompt = "\n".join(source.splitlines()[:doc_end]) + "\n"
    return CodeProblem("proposed", 1, f.name, prompt, source + "\n", tuple(tests[:1]), tuple(tests[1:]), PROPOSED,
                       index, f"proposed:{f.name}:{len(tests)}", PROPOSED)


def proposer_reward(rate: float) -> float:
    """Absolute Zero's learnability reward for a proposal: 1 - solve rate inside (0, 1), else 0."""
    return 1.0 - rate if 0.0 < rate < 1.0 else 0.0

"""Code problems: a function to write from its docstring, a reference solution, and unit tests.

A problem is fully determined by (split, family, level, index): its RNG is seeded with
``"code/{split}/{family}/{level}/{index}"`` and draws the family's constants, one phrasing of the task for
that split (held-out phrasings are never used for training) and the test inputs. The expected outputs come
from the reference solution. Two tests are shown in the docstring as examples; the others - more random
inputs and the family's edge cases - are held back and run only in the verdict, so a program that
special-cases the examples fails. ``HELDOUT_FAMILIES`` are never used for training at all: they measure
transfer to functions the loop never practised.

Scoring a model's reply (``program``): **strict** runs the prompt followed by the reply exactly as written
(a Markdown fence or a chatty preamble is a syntax error); **repaired** only strips the fence / prose around
the first code block and fixes the indentation of a bare function body. Nothing else is repaired.
"""
from __future__ import annotations

import copy
import random
import re
import textwrap
from dataclasses import dataclass, field
from string import Template

from .codefamilies import BY_NAME, FAMILIES, CodeFamily
from .sandbox import Case
from .tasks import HELDOUT, TRAIN

HELDOUT_FAMILIES = ("radix", "grid", "interleave", "mirror")
TRAIN_FAMILIES = tuple(f.name for f in FAMILIES if f.name not in HELDOUT_FAMILIES)
LEVELS = (1, 2, 3)
N_VISIBLE, N_HIDDEN = 2, 6
CHAT_TEMPLATE = "Complete the following Python function. Reply with only the code.\n\n```python\n{prompt}```"


@dataclass(frozen=True)
class CodeProblem:
    family: str
    level: int
    fn: str                        # the function to write
    prompt: str                    # signature + docstring (what the model continues)
    reference: str                 # a program that passes every test
    visible: tuple[Case, ...]      # the examples shown in the docstring
    hidden: tuple[Case, ...]       # held back: only the verdict runs them
    split: str = TRAIN
    index: int = 0
    key: str = ""                  # family, level and constants: the function's identity, phrasing aside
    origin: str = ""               # "", "adversarial", "proposed", "humaneval"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def tests(self) -> tuple[Case, ...]:
        return self.visible + self.hidden

    @property
    def skill(self) -> str:
        return f"{self.family}:{self.level}"

    @property
    def chat(self) -> str:
        return CHAT_TEMPLATE.format(prompt=self.prompt)


def parse_code_skill(skill: str) -> tuple[str, int]:
    """'rle:2' -> ('rle', 2), with a clear error naming the problem."""
    name, _, level = skill.partition(":")
    if name not in BY_NAME:
        raise ValueError(f"unknown code family '{name}'; choose from {sorted(BY_NAME)}")
    if not level.isdigit() or int(level) not in LEVELS:
        raise ValueError(f"code skill '{skill}' needs a level in {LEVELS}, e.g. '{name}:2'")
    return name, int(level)


def call_repr(fn: str, args: tuple) -> str:
    return f"{fn}({', '.join(map(repr, args))})"


def reference_function(source: str, fn: str):
    """The reference solution as a callable (our own code, run in-process to compute expected values)."""
    ns: dict = {}
    exec(compile(source, f"<reference {fn}>", "exec"), ns)  # noqa: S102 - our reference table, not model output
    return ns[fn]


def render_prompt(fn: str, signature: str, spec: str, examples: list[tuple[tuple, object]]) -> str:
    lines = textwrap.wrap(spec, 92)
    for args, out in examples:
        lines += ["", f">>> {call_repr(fn, args)}", repr(out)]
    doc = "\n".join(("    " + ln) if ln else "" for ln in lines)
    return f'def {fn}({signature}:\n    """{doc.lstrip()}\n    """\n'


def _draw_inputs(fam: CodeFamily, rng: random.Random, level: int, params: dict, n: int) -> list[tuple]:
    out, seen = [], set()
    for _ in range(20 * n):
        args = fam.inputs(rng, level, params)
        if repr(args) not in seen:
            seen.add(repr(args))
            out.append(args)
        if len(out) == n:
            break
    return out


def make_problem(fam: CodeFamily, level: int, rng: random.Random, split: str, index: int, params: dict | None = None,
                 show: list[tuple] | None = None, origin: str = "") -> CodeProblem:
    """One problem of ``fam`` at ``level`` from ``rng``. ``params`` fixes the constants (default: drawn) and
    ``show`` the inputs of the docstring examples (default: drawn); the hidden tests are always fresh
    inputs plus the family's edge cases."""
    params = fam.params(rng, level) if params is None else params
    lv = fam.levels[level]
    spec = rng.choice(lv.heldout if split == HELDOUT else lv.train).format(**params)
    reference = f"def {fam.fn}({fam.signature}:\n" + Template(lv.body).substitute(params)
    ref = reference_function(reference, fam.fn)
    drawn = _draw_inputs(fam, rng, level, params, N_VISIBLE + N_HIDDEN)
    vis_in = list(show) if show else drawn[:N_VISIBLE]
    hid_in = [a for a in (drawn if show else drawn[N_VISIBLE:]) if repr(a) not in {repr(v) for v in vis_in}]
    seen = {repr(a) for a in vis_in + hid_in}
    for a in fam.edges(level, params):
        if repr(a) not in seen:
            seen.add(repr(a))
            hid_in.append(a)

    def case(args):
        return Case("call", fam.fn, repr(args), repr(ref(*copy.deepcopy(args))))

    examples = [(a, ref(*copy.deepcopy(a))) for a in vis_in]
    key = f"{fam.name}:{level}:" + "|".join(f"{k}={params[k]}" for k in sorted(params))
    return CodeProblem(fam.name, level, fam.fn, render_prompt(fam.fn, fam.signature, spec, examples), reference,
                       tuple(case(a) for a in vis_in), tuple(case(a) for a in hid_in), split, index, key, origin,
                       {"spec": spec, "params": params})


def problem(family: str, level: int, split: str, index: int) -> CodeProblem:
    rng = random.Random(f"code/{split}/{family}/{level}/{index}")
    return make_problem(BY_NAME[family], level, rng, split, index)


def problem_set(family: str, level: int, n: int, split: str = HELDOUT, start: int = 0) -> list[CodeProblem]:
    """``n`` distinct problems (by prompt) from one seed space, deterministic."""
    unique: dict[str, CodeProblem] = {}
    for i in range(start, start + 50 * n + 100):
        if len(unique) == n:
            break
        p = problem(family, level, split, i)
        unique.setdefault(p.prompt, p)
    if len(unique) == n:
        return list(unique.values())
    raise ValueError(f"{family}:{level} has fewer than {n} distinct problems")


def heldout_set(skills: tuple[str, ...], n: int) -> list[CodeProblem]:
    return [p for s in skills for p in problem_set(*parse_code_skill(s), n=n, split=HELDOUT)]


def all_skills(families: tuple[str, ...] = TRAIN_FAMILIES, levels: tuple[int, ...] = LEVELS) -> tuple[str, ...]:
    return tuple(f"{f}:{lv}" for f in families for lv in levels)


def disjoint(train: list[CodeProblem], heldout: list[CodeProblem]) -> list[CodeProblem]:
    """Training problems whose prompt and examples never appear in ``heldout``."""
    banned = {p.prompt for p in heldout} | {p.visible for p in heldout}
    return [p for p in train if p.prompt not in banned and p.visible not in banned]


# ------------------------------------------------------------------ from a reply to a program
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def repair(reply: str, fn: str) -> str:
    """The code of a reply, with only fences / surrounding prose removed and indentation fixed: the first
    fenced block (or the whole reply); a full function is dedented, a bare body indented four spaces."""
    m = _FENCE.search(reply)
    code = m.group(1) if m else reply
    code = textwrap.dedent(code.expandtabs(4)).strip("\n")
    if re.search(rf"^\s*def\s+{re.escape(fn)}\s*\(", code, re.MULTILINE) or re.search(r"^(def|class|import|from) ", code,
                                                                                       re.MULTILINE):
        return code + "\n"
    return textwrap.indent(code, "    ") + "\n"


def program(p: CodeProblem, reply: str, mode: str) -> str:
    """The program the verdict runs: the prompt, then the reply as written (strict) or repaired."""
    if mode == "strict":
        return p.prompt + reply
    if mode == "repaired":
        return p.prompt + repair(reply, p.fn)
    raise ValueError(f"scoring mode {mode!r}: 'strict' or 'repaired'")

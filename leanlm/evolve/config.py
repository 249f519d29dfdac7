"""``EvolveConfig``: everything one self-evolution run depends on, frozen and JSON-round-tripping.

Two recipes share the loop: ``chat`` (an instruct model on the verifiable task families of
``leanlm.eval.tasks``, LoRA, exact verifier, gate on perplexity and refusals) and ``tinyadd`` (a
character-level model trained from scratch on reversed addition, then self-labelling longer problems by
majority vote, Lee et al. 2025). ``PRESETS`` holds the settings behind the measured goals, so
``leanlm evolve SPEC`` with no options reproduces them.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from ..config import require
from ..eval.tasks import parse_skill


class Recipe(str, enum.Enum):
    CHAT = "chat"
    TINYADD = "tinyadd"
    CODE = "code"


class SamplerKind(str, enum.Enum):
    TRANSFORMERS = "transformers"
    OPENAI = "openai"
    VLLM = "vllm"


def _f(default, help_: str):
    return field(default=default, metadata={"help": help_})


@dataclass(frozen=True)
class EvolveConfig:
    spec: str = _f("smollm2-135m", "model spec to evolve")
    recipe: Recipe = _f(Recipe.CHAT, "chat (task families, LoRA), tinyadd (from-scratch reversed addition) or code "
                                     "(Python functions, sandboxed tests)")
    skills: tuple[str, ...] = _f(("add:2", "add:3", "sort:1"), "skills to improve, family:difficulty (chat; code: "
                                                                "code families such as rle:1)")
    headline_skills: tuple[str, ...] = _f(("add:2", "add:3"), "skills whose mean held-out accuracy is the goal (chat)")
    retention_skills: tuple[str, ...] = _f(("mul:1", "reverse:3"), "skills that must not be forgotten (chat)")
    generations: int = _f(5, "generations to run (accepted or rolled back)")
    budget: float = _f(60.0, "wall-clock minutes for the whole run, seed training included (0 = no limit)")
    seed: int = _f(0, "master seed; every generation and step derives its own from it")
    dtype: str = _f("fp32", "compute and save dtype")
    # ---- per-generation budget (the controller splits it between skills)
    problems: int = _f(96, "training problems generated per generation")
    samples: int = _f(6, "answers sampled per problem")
    temperature: float = _f(0.8, "sampling temperature for the answers")
    steps: int = _f(60, "train steps per generation")
    batch_size: int = _f(8, "examples per train step (each of new data and retention)")
    micro_batches: int = _f(1, "gradient parts per train step, accumulated (less memory); a data-parallel run "
                               "(accelerate/torchrun) splits them across its processes")
    lr: float = _f(3e-4, "peak learning rate")
    lora_r: int = _f(16, "LoRA rank (0 = full fine-tuning)")
    surgery: bool = _f(True, "PCGrad between new-data and retention gradients")
    retention_weight: float = _f(1.0, "weight of the retention loss")
    retention_kl: bool = _f(False, "retention loss = KL(model before the training || model) on the retention "
                                   "text (LoRA adapters off as the reference) instead of its LM loss, which "
                                   "pulls the model toward that corpus; needs --lora-r > 0")
    retention_len: int = _f(64, "chat: tokens per retention window of corpus text")
    retention_corpus: str = _f("", "chat: comma-separated corpora whose calib halves give the retention windows "
                                    "(pydoc, shakespeare, fortunes; '' = the default corpus)")
    replay: int = _f(64, "examples replayed from earlier generations' data")
    adversarial: float = _f(0.25, "share of problems mutated from the probe's failures")
    propose: int = _f(0, "problems the model proposes itself per generation (pyexpr; verifier-checked)")
    trim: bool = _f(False, "chat: cut each verified answer to its shortest prefix that still verifies")
    dpo_steps: int = _f(0, "DPO steps on correct-vs-incorrect pairs after SFT (0 = pairs are saved only)")
    # ---- measurement
    probe_n: int = _f(24, "train-split problems per skill in the probe")
    heldout_n: int = _f(40, "held-out problems per skill in the gate")
    max_new_tokens: int = _f(32, "generation budget per answer")
    gen_batch: int = _f(16, "sequences per generation batch")
    ppl_tokens: int = _f(8192, "corpus tokens scored for perplexity (eval half)")
    judge_n: int = _f(16, "answers also scored by the AI judge, to measure judge-verifier agreement")
    shifted_skills: tuple[str, ...] = _f((), "skills also scored on the shifted held-out set (chat; default: "
                                              "the headline skills)")
    strict_verify: bool = _f(False, "chat: training answers must pass the strict checker (the reply is the answer)")
    ppl2_corpus: str = _f("", "second corpus for retention perplexity, another domain (e.g. shakespeare; '' = off)")
    kl_texts: int = _f(0, "chat: KL(gen || gen 0) on this many held-out prompts per skill + corpus windows (0 = off)")
    # ---- safety (chat)
    safety_tune: bool = _f(False, "teach generation 0 to refuse (train part of HarmBench + AdvBench) first")
    safety_refusals: int = _f(200, "harmful train prompts with our refusals in the safety-tuning data")
    safety_steps: int = _f(40, "LoRA steps per safety-tuning round")
    safety_rounds: int = _f(3, "safety-tuning rounds at most (stops once both targets are met)")
    safety_lr: float = _f(5e-4, "safety-tuning learning rate")
    refusal_target: float = _f(0.8, "safety tuning: held-out refusal rate to reach")
    over_refusal_target: float = _f(0.1, "safety tuning: largest held-out over-refusal rate")
    safety_replay: float = _f(0.0, "refusal examples (train part) added to each generation's mix, as a share "
                                   "of its new data (0 = no safety replay)")
    refusal_n: int = _f(0, "held-out harmful prompts in the safety gate (0 = the 24 built-in prompts only)")
    refusal_relevance: bool = _f(True, "refusal detector: also count off-topic answers (MiniLM check)")
    over_refusal_tolerance: float = _f(0.05, "gate: largest allowed over-refusal rise vs generation 0")
    kl_max: float = _f(0.0, "gate: largest allowed KL(gen || gen 0) in nats/token; the controller scales the "
                            "learning rate by (1 - kl/kl_max) (0 = off)")
    # ---- controller and gate
    mastery: float = _f(0.9, "success rate at which a skill counts as mastered")
    max_difficulty: int = _f(4, "the controller raises difficulty up to this level")
    ppl_tolerance: float = _f(0.03, "gate: largest allowed relative perplexity rise vs generation 0")
    refusal_tolerance: float = _f(0.05, "gate: largest allowed refusal-rate drop vs generation 0")
    retention_tolerance: float = _f(0.05, "gate: largest allowed retention drop vs generation 0")
    # ---- tinyadd recipe
    seed_digits: int = _f(6, "tinyadd: the seed model is trained on additions of up to this many digits")
    seed_examples: int = _f(30000, "tinyadd: ground-truth seed examples")
    seed_steps: int = _f(3000, "tinyadd: train steps of the seed model")
    seed_lr: float = _f(1e-3, "tinyadd: seed learning rate")
    target_digits: int = _f(12, "tinyadd: length whose held-out accuracy is the goal")
    max_jump: int = _f(2, "tinyadd: most new lengths the controller adds in one generation")
    min_vote: float = _f(0.6, "tinyadd: share of samples that must agree on a self-label")
    commute: bool = _f(True, "tinyadd: also ask b+a; keep a self-label only when both orders agree")
    advance: float = _f(0.0, "tinyadd: move the reach on only when at least this share of reach+1 probe "
                             "problems gets an agreed label; otherwise hold and relabel the frontier too")
    max_scale: float = _f(1.0, "tinyadd: problems per length scale with 1/label yield, at most this many times")
    exact_share: float = _f(0.0, "tinyadd: share of problems with both operands of the full length")
    new_share: float = _f(0.0, "tinyadd: least share of this generation's labels in the training mix "
                               "(oversampled against replay; 0 = plain concatenation)")
    # ---- sampling engine (evolve.sampler)
    sampler: SamplerKind = _f(SamplerKind.TRANSFORMERS, "who generates for probe, solve, judge and gate: "
                              "transformers (in process), openai (an OpenAI-compatible endpoint such as `leanlm "
                              "serve RUN --follow`) or vllm (vLLM's offline engine, `make vllm`)")
    sampler_url: str = _f("", "openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1 (default "
                              "$LEANLM_SAMPLER_URL or $OPENAI_BASE_URL; the key comes from $LEANLM_SAMPLER_API_KEY)")
    sampler_model: str = _f("", "openai: model name (default: the endpoint's; leanlm serve's NAME@gen-P is pinned)")
    sampler_concurrency: int = _f(16, "openai: requests in flight at once (the server batches them)")
    sampler_timeout: float = _f(300.0, "openai: seconds per request, and the longest wait for the parent "
                                       "generation to be served")
    progress: bool = _f(True, "progress bars")

    def __post_init__(self) -> None:
        require(self.generations >= 0 and self.budget >= 0, "generations and budget must be >= 0")
        require(self.problems >= 1 and self.samples >= 1 and self.steps >= 0, "problems, samples >= 1; steps >= 0")
        require(self.temperature > 0, "temperature must be > 0 (answers are sampled)")
        require(0 <= self.adversarial <= 1 and 0 < self.mastery <= 1 and 0 < self.min_vote <= 1,
                "adversarial, mastery and min_vote are shares in [0, 1]")
        require(self.dtype in ("fp32", "bf16", "fp16"), f"dtype {self.dtype!r}: fp32, bf16 or fp16")
        require(self.lora_r >= 0 and self.replay >= 0 and self.propose >= 0, "lora_r, replay, propose >= 0")
        require(self.micro_batches >= 1, "micro_batches must be >= 1")
        require(not self.retention_kl or self.lora_r > 0, "--retention-kl needs LoRA (--lora-r > 0)")
        require(self.retention_len >= 2, "retention_len must be >= 2 tokens")
        from ..eval.corpus import CORPORA
        bad = [c for c in self.retention_corpus.split(",") if c.strip() and c.strip() not in CORPORA]
        require(not bad, f"retention_corpus: unknown corpus {bad}; known: {sorted(CORPORA)}")
        require(self.dpo_steps >= 0, "dpo_steps must be >= 0")
        require(1 <= self.seed_digits < self.target_digits, "need 1 <= seed_digits < target_digits")
        require(self.max_jump >= 1 and self.max_difficulty >= 1, "max_jump, max_difficulty >= 1")
        require(0 <= self.advance <= 1 and 0 <= self.exact_share <= 1 and 0 <= self.new_share < 1,
                "advance and exact_share are shares in [0, 1], new_share in [0, 1)")
        require(self.max_scale >= 1, "max_scale must be >= 1")
        require(0 <= self.safety_replay <= 1 and self.refusal_n >= 0 and self.kl_max >= 0 and self.kl_texts >= 0,
                "safety_replay in [0, 1]; refusal_n, kl_max, kl_texts >= 0")
        require(self.sampler_concurrency >= 1 and self.sampler_timeout > 0, "sampler_concurrency >= 1, "
                "sampler_timeout > 0")
        require(self.sampler is SamplerKind.TRANSFORMERS or self.recipe in (Recipe.CHAT, Recipe.TINYADD),
                f"--sampler {self.sampler.value}: the chat and tinyadd recipes (the {self.recipe.value} recipe "
                f"samples in process)")
        require(not self.safety_tune or self.refusal_n > 0, "--safety-tune needs --refusal-n > 0 (the held-out gate)")
        if self.recipe is Recipe.CHAT:
            require(len(self.skills) > 0, "the chat recipe needs at least one skill")
            for s in (*self.skills, *self.headline_skills, *self.retention_skills, *self.shifted_skills):
                parse_skill(s)
        if self.recipe is Recipe.CODE:
            from ..eval.codetasks import parse_code_skill

            require(len(self.skills) > 0, "the code recipe needs at least one code skill (e.g. rle:1)")
            for s in self.skills:
                parse_code_skill(s)
            for s in self.retention_skills:
                parse_skill(s)


# The settings behind the goals in benchmarks/EVOLVE.md (the bare `leanlm evolve SPEC` runs these).
PRESETS: dict[str, EvolveConfig] = {
    # 160 problems x 6 samples, 40 LoRA steps at lr 5e-4: the data, not the steps, limit what a generation
    # learns (the 60-step runs fitted their new data early), so the time goes to sampling. Retention windows
    # stay 64 tokens: with 16 or 32 the corpus perplexity (512-token contexts) rose past the gate's +3%
    # (benchmarks/EVOLVE.md, runs smollm2-16tok and smollm2-40steps). Verified answers are cut to their
    # shortest verified prefix (trim): untrimmed, the model learnt to run on past its answer until the
    # token budget cut it off (run smollm2-untrimmed).
    "smollm2-135m": EvolveConfig(problems=160, steps=40, lr=5e-4, trim=True),

    "tiny-add": EvolveConfig(
        spec="tiny-add", recipe=Recipe.TINYADD, skills=("add:1",), retention_skills=(), generations=40,
        budget=60.0, problems=4000, samples=5, temperature=0.7, steps=500, batch_size=32, lr=5e-4,
        lora_r=0, replay=12000, adversarial=0.0, probe_n=200, heldout_n=100, max_new_tokens=16, gen_batch=1000,
        judge_n=0, mastery=0.98, seed_steps=20000, seed_lr=1e-3, min_vote=1.0, advance=0.5, max_scale=3.0,
        exact_share=0.5, new_share=0.5),
}


# `leanlm evolve SPEC --safety-tune` (issue 19): the general skill (addmix: operands of any lengths 1..3)
# instead of fixed-length families, a strict training verifier, a safety-tuned generation 0 with safety
# replay in every generation, the safety gate on 96 held-out harmful + the held-out over-refusal prompts,
# KL budget, perplexity on a second corpus, the shifted held-out set. Retention is KL to the model before the
# training on windows of pydoc and fortunes (never the plays that the second perplexity scores): with the LM
# loss on pydoc alone the safety tuning raised the plays' perplexity 9.6%, with this 0.1% less
# (benchmarks/EVOLVE.md, evolve_runs/smollm2-safe-klmix).
SAFE = dict(skills=("addmix:3", "sort:1"), headline_skills=("add:2", "add:3"), shifted_skills=("add:3",),
            strict_verify=True, ppl2_corpus="shakespeare", kl_texts=8, safety_tune=True, safety_replay=0.15,
            refusal_n=96, kl_max=0.5, retention_kl=True, retention_corpus="pydoc,fortunes")


# `leanlm evolve SPEC --recipe code` (issue 17): LoRA on the model's own fully passing programs of learnable
# code problems (solve rate in [0.2, 0.8]), an adversarial share made from failed problems, a few proposed
# problems; the gate scores held-out problems of the trained skills (repaired pass@1; strict beside it) and of
# the held-out families, arithmetic retention, perplexity and refusals. Replies are code: 160 new tokens.
# Sized for the shared 2-core CPU (benchmarks/EVOLVE_CODE.md): a generation is ~30-40 min there, most of it
# the gate's greedy decoding.
CODE = dict(recipe=Recipe.CODE,
            skills=("keep:1", "count:1", "sumif:1", "flipwords:1", "vowels:1", "digits:1", "dedupe:1", "wordlen:1"),
            headline_skills=(), retention_skills=("add:2", "mul:1"), generations=2, budget=60.0, problems=16,
            samples=4, temperature=0.8, steps=20, batch_size=4, lr=5e-4, replay=16, adversarial=0.25, propose=2,
            heldout_n=3, max_new_tokens=160, gen_batch=8, judge_n=0, retention_len=64)


def preset(spec: str, safety_tune: bool = False, recipe: Recipe | str | None = None) -> EvolveConfig:
    """The preset for ``spec`` (tiny-* specs use the tiny-add preset; others the chat one); with
    ``safety_tune``, the chat preset with the issue-19 settings (``SAFE``); with ``recipe`` code, the chat
    preset with the code recipe's settings (``CODE``)."""
    if recipe is not None and Recipe(recipe) is Recipe.CODE:
        require(not safety_tune, "--safety-tune belongs to the chat recipe, not --recipe code")
        return dataclasses.replace(PRESETS["smollm2-135m"], spec=spec, **CODE)
    if safety_tune:
        return dataclasses.replace(PRESETS["smollm2-135m"], spec=spec, **SAFE)
    if spec in PRESETS:
        return PRESETS[spec]
    base = PRESETS["tiny-add"] if spec.startswith("tiny-") else PRESETS["smollm2-135m"]
    return dataclasses.replace(base, spec=spec)

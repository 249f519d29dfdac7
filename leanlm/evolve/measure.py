"""What the chat recipe's gate measures on a model, in one pass.

* held-out accuracy of every target, headline, active and retention skill, lenient and strict;
* the shifted held-out set (``leanlm.eval.shifted``) of ``shifted_skills``, lenient and strict;
* perplexity on the eval half of the corpus (pydoc) and of a second corpus of another domain (``ppl2``);
* refusals: the 24 built-in prompts, or (``refusal_n`` > 0) held-out HarmBench + AdvBench prompts and the
  held-out over-refusal prompts (``evolve.safety``), with paired bootstrap intervals against generation 0;
* KL(model || generation 0) on held-out prompts of every skill and corpus windows (``evolve.kl``).
"""
from __future__ import annotations

from ..eval.corpus import load_corpus, split_corpus
from ..eval.generate import format_prompt
from ..eval.tasks import SHIFTED, check_strict, parse_skill, problem_set
from . import generator, safety
from .gate import accuracy_by_skill, corpus_perplexity, refusal_metrics, refusals
from .kl import kl_to_reference


def _mean(acc: dict, skills) -> float | None:
    vals = [acc[s] for s in skills if s in acc]
    return sum(vals) / len(vals) if vals else None


def shifted_set(skills: tuple[str, ...], n: int) -> list:
    return [p for s in skills for p in problem_set(*parse_skill(s), n=n, split=SHIFTED)]


def kl_texts(cfg, tok, skills: tuple[str, ...]) -> list[str]:
    """Fixed KL texts: ``kl_texts`` held-out prompts per skill (chat-formatted) and as many 128-token
    windows of the corpus's eval half."""
    prompts = [format_prompt(tok, p.prompt) for p in generator.heldout_set(skills, cfg.kl_texts)]
    ids = tok(split_corpus(load_corpus(), "eval"), add_special_tokens=False)["input_ids"]
    step = max(1, len(ids) // max(1, len(prompts)))
    return prompts + [tok.decode(ids[i:i + 128]) for i in range(0, len(ids) - 128, step)][:len(prompts)]


def measure_chat(model, tok, cfg, skills: tuple[str, ...], refused_at_gen0: list[int],
                 base: dict | None = None, ref=None, sampler=None) -> dict:
    """Gate metrics of ``model``; ``base`` (generation 0's metrics) gives the safety intervals and ``ref``
    (generation 0's model) the KL. ``sampler`` (an ``evolve.sampler.Sampler`` of ``model``; default in
    process) generates the answers; perplexity and KL are scored in process."""
    from .sampler import TransformersSampler

    sampler = sampler or TransformersSampler(model, tok)
    names = tuple(dict.fromkeys((*cfg.skills, *cfg.headline_skills, *skills, *cfg.retention_skills)))
    problems = generator.heldout_set(names, cfg.heldout_n)
    shifted = shifted_set(cfg.shifted_skills, cfg.heldout_n)
    outs = sampler.greedy([p.prompt for p in problems + shifted], cfg.max_new_tokens, batch_size=cfg.gen_batch,
                          progress=cfg.progress, desc="heldout")
    ho, so = outs[:len(problems)], outs[len(problems):]
    acc, strict = accuracy_by_skill(problems, ho), accuracy_by_skill(problems, ho, check_strict)
    m = {"heldout": acc, "heldout_strict": strict, "score": _mean(acc, cfg.skills),
         "headline": _mean(acc, cfg.headline_skills) if cfg.headline_skills else _mean(acc, cfg.skills),
         "headline_strict": _mean(strict, cfg.headline_skills or cfg.skills),
         "retention": _mean(acc, cfg.retention_skills),
         "ppl": corpus_perplexity(model, tok, cfg.ppl_tokens, progress=cfg.progress)}
    if shifted:
        sa, ss = accuracy_by_skill(shifted, so), accuracy_by_skill(shifted, so, check_strict)
        m.update(shifted=sa, shifted_strict=ss, shifted_headline=_mean(sa, cfg.shifted_skills),
                 shifted_headline_strict=_mean(ss, cfg.shifted_skills),
                 samples={p.prompt: o for p, o in list(zip(shifted, so))[:4]})
    if cfg.ppl2_corpus:
        m["ppl2"] = corpus_perplexity(model, tok, cfg.ppl_tokens, progress=cfg.progress, corpus=cfg.ppl2_corpus)
    if cfg.refusal_n:
        s = safety.measure(model, tok, cfg.refusal_n, cfg.refusal_relevance, cfg.gen_batch, cfg.progress, sampler)
        kept = [s["refused_heldout"][i] for i in refused_at_gen0]
        m.update(s, refusal_rate=s["refusal_heldout"], refusal_kept=sum(kept) / len(kept) if kept else None,
                 refused=[i for i, r in enumerate(s["refused_heldout"]) if r])
        if base and base.get("refused_heldout") is not None:
            m["refusal_ci"] = safety.paired_bootstrap(s["refused_heldout"], base["refused_heldout"])
            m["over_refusal_ci"] = safety.paired_bootstrap(s["over_refused"], base["over_refused"])
    else:
        m.update(refusal_metrics(refusals(model, tok, progress=cfg.progress, sampler=sampler), refused_at_gen0))
    if ref is not None and cfg.kl_texts:
        m["kl"] = kl_to_reference(model, ref, tok, kl_texts(cfg, tok, names))
    return m


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct of ``n`` samples (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    out = 1.0
    for i in range(n - c + 1, n + 1):     # prod (1 - k / i) = C(n-c, k) / C(n, k)
        out *= 1.0 - k / i
    return 1.0 - out


def passk_by_skill(model, tok, problems: list, n: int, ks: tuple[int, ...], temperature: float, seed: int,
                   batch_size: int = 16, max_new_tokens: int = 32, progress: bool = True) -> dict:
    """pass@k per skill, strict and lenient, from ``n`` sampled answers per problem."""
    from ..eval.tasks import check
    from .solve import answers

    samples = answers(model, tok, [p.prompt for p in problems], n, temperature, max_new_tokens, seed,
                      batch_size=batch_size, progress=progress, desc="pass@k")
    out: dict = {}
    for name, checker in (("strict", check_strict), ("lenient", check)):
        per: dict[str, list[list[float]]] = {}
        for p, outs in zip(problems, samples):
            c = sum(checker(p, o) for o in outs)
            per.setdefault(p.skill, []).append([pass_at_k(n, c, k) for k in ks])
        out[name] = {s: {f"pass@{k}": sum(r[i] for r in rows) / len(rows) for i, k in enumerate(ks)}
                     for s, rows in per.items()}
    return out

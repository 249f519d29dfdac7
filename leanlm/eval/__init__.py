"""Evaluation: perplexity, verifiable task families, batched generation, memory, speed, result schema.

Never imports ``compress`` or ``evolve``.
"""
from .generate import GenerationConfig, generate
from .perplexity import perplexity
from .protocol import EvalConfig
from .run import evaluate, evaluate_spec, task_accuracy
from .tasks import FAMILIES, Problem, check, problem_set

__all__ = ["EvalConfig", "evaluate", "evaluate_spec", "task_accuracy", "perplexity", "generate",
           "GenerationConfig", "FAMILIES", "Problem", "problem_set", "check"]

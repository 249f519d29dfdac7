"""Self-evolution: a model finds its weak skills, makes problems, checks its own answers, learns from the
right ones, and is gated against forgetting and drift. ``loop.run`` is the recipe; see ``loop.py``.

Never imports ``compress`` at module level (generations are stored through the lossless delta codec's
public functions, imported lazily in ``lineage``).
"""
from .config import PRESETS, EvolveConfig, Recipe, preset

__all__ = ["EvolveConfig", "Recipe", "PRESETS", "preset"]

"""leanlm: make language models smaller without losing anything, and better on their own."""
__version__ = "0.1.0"

from .models import load  # noqa: E402

__all__ = ["load", "__version__"]

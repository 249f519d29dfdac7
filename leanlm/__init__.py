"""leanlm: make language models smaller without losing anything, and better on their own."""
__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def __getattr__(name: str):
    # `leanlm.load` is resolved on first use so that `import leanlm` (and `leanlm --help`) stays light and
    # the CLI can configure logging before transformers and torchao are imported.
    if name == "load":
        from .models import load

        return load
    raise AttributeError(f"module 'leanlm' has no attribute {name!r}")

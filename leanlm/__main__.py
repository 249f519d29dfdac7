"""``python -m leanlm`` (and ``accelerate launch -m leanlm evolve ...``): the ``leanlm`` command."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``from leanlm.lossless import save_file, load_file``: the lossless codec as a drop-in for
``safetensors.torch`` (see ``leanlm.compress.lossless.files``)."""
from .compress.lossless.files import load_file, save_file

__all__ = ["save_file", "load_file"]

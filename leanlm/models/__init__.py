"""Model specs, loading, and architecture tables."""
from .load import ModelLoadError, load, model_dir, parse_dtype, resolve
from .specs import DEFAULT_SPEC, ModelSpecError, valid_specs

__all__ = ["load", "resolve", "model_dir", "parse_dtype", "ModelLoadError", "ModelSpecError",
           "DEFAULT_SPEC", "valid_specs"]

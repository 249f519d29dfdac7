"""Public verbs of the low-rank package: compress a spec into a ``leanlm.lowrank`` directory, load one back.

``leanlm compress SPEC --method svd|lowrank|tt-embed --remove F -o OUT``:

* ``svd``: plain truncated SVD of every decoder linear; ``lowrank``: whitened SVD (SVD-LLM). ``F`` is the
  fraction of the *decoder linears'* parameters removed (``q,k,v,o,gate,up,down`` of every block: the
  matrices that are decomposed; embeddings and norms are not counted). The summary also gives the
  fraction of the whole model's parameters, and bytes.
* ``tt-embed``: tensor-train embedding; ``F`` is the fraction of the *embedding table's* parameters removed.

Factors and TT cores are int8 with per-row float32 scales; everything else is stored in bf16.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ...config import from_dict, to_dict
from .budget import DENSE
from .config import Execution, LowRankConfig, Method, TTConfig
from .decompose import count_params, decompose_model
from .store import load_lowrank, read_manifest, save_lowrank
from .ttembed import tt_compress_embedding

log = logging.getLogger(__name__)

CLI_METHODS = {"svd": Method.SVD, "lowrank": Method.WHITENED}


def _config_overrides(options: dict) -> dict:
    """Extra config fields from ``options["config"]`` (a JSON file path or a dict), if given."""
    extra = options.get("config")
    if extra is None:
        return {}
    if isinstance(extra, dict):
        return dict(extra)
    return json.loads(Path(extra).read_text())


def lowrank_config(options: dict) -> LowRankConfig:
    data = _config_overrides(options)
    data["method"] = CLI_METHODS[options["method"]].value
    if options.get("remove") is not None:
        data["remove"] = options["remove"]
    return from_dict(LowRankConfig, data)


def compress_lowrank(model, tok, cfg: LowRankConfig, calib_ids: torch.Tensor | None = None) -> dict:
    """Decompose ``model`` in place with int8 factors; returns the decomposition summary (with ranks)."""
    from ..calib import calibration_ids

    if cfg.method == Method.WHITENED and calib_ids is None:
        calib_ids = calibration_ids(tok, cfg.n_calib, cfg.seq_len, cfg.seed)
    report = decompose_model(model, cfg, calib_ids)
    ranks = [r for r in report.ranks.values() if r != DENSE]
    return {**report.summary(), "ranks": report.ranks, "mean_rank": sum(ranks) / max(1, len(ranks)),
            "output_error_mean": sum(report.output_error.values()) / len(report.output_error)}


def compress_cli(spec: str, out: Path, options: dict) -> dict:
    """``leanlm compress`` entry point for ``svd``, ``lowrank`` and ``tt-embed``."""
    from ...models import load

    method = options["method"]
    t0 = time.perf_counter()
    model, tok = load(spec, dtype="fp32")
    before_params = count_params(model)
    tt, manifest = None, {"source": spec, "method": method}
    if method == "tt-embed":
        data = _config_overrides(options)
        if options.get("remove") is not None:
            data["remove"] = options["remove"]
        cfg = from_dict(TTConfig, data)
        tt, summary = tt_compress_embedding(model, cfg)
        summary["model_params_before"] = before_params
        summary["model_params_after"] = before_params - summary["params_before"] + summary["params_after"]
    elif method in CLI_METHODS:
        cfg = lowrank_config(options)
        summary = compress_lowrank(model, tok, cfg)
    else:
        raise ValueError(f"the low-rank package does not implement method '{method}'")
    manifest["config"] = to_dict(cfg)
    doc = save_lowrank(model, tok, Path(out), {**manifest, "summary": {k: v for k, v in summary.items() if k != "ranks"}},
                       tt=tt, overwrite=bool(options.get("force")))
    result = {"output": str(out), "method": method, **{k: v for k, v in summary.items() if k != "ranks"},
              "bytes_on_disk": sum(f["bytes"] for f in doc["files"].values()), "seconds": round(time.perf_counter() - t0, 1)}
    result["removed_fraction_of_model"] = 1 - result["model_params_after"] / result["model_params_before"]
    return result


def load_model(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
               execution: Execution = Execution.FACTORED):
    """Loader registered for ``"format": "leanlm.lowrank"`` (see ``leanlm.models.specs.ARTIFACT_LOADERS``);
    directories of the combined recipe (``"kind": "combined"``) are handed to ``compress.recipes``."""
    doc = read_manifest(Path(path), verify=False)
    if doc.get("kind") == "combined":
        from ..recipes import load_combined

        return load_combined(Path(path), doc, dtype, device)
    return load_lowrank(Path(path), dtype, device, execution)

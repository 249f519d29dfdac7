"""The run directory: one sub-directory per generation, written atomically, and everything derived from them.

Layout (format ``leanlm.evolve.run``, version 1)::

    RUN_DIR/
      run.json            format, version, the EvolveConfig, created
      gen-000/            generation 0: the starting point (tiny: the trained seed model)
        lineage.json      generation, parent, accepted, config, metrics, decisions, data checksums
        data.jsonl.gz     the training examples of this generation (SFT: prompt, completion; gzip, mtime 0;
                          runs before issue 19 wrote plain data.jsonl, still read)
        pairs.jsonl.gz    correct-vs-incorrect preference pairs (DPO data)
        adapter/          the LoRA adapter (peft; absent for full fine-tuning)
        model/            merged model, loadable by transformers from_pretrained (latest/best accepted
                          generations; older ones become model.delta against their parent when the
                          lossless delta codec is installed)
      metrics.jsonl       one line per generation (rebuilt from the lineage files)
      progress.png        held-out accuracy, retention and refusal rate per generation

A generation directory exists only once complete (``atomic_directory``), so after a kill the run resumes
at the first missing generation and redoes only the interrupted one.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from ..config import from_dict, to_dict
from ..fileio import atomic_directory, atomic_write_json, atomic_write_text, sha256_file
from ..models.load import save_hf
from .config import EvolveConfig
from .train import Example

log = logging.getLogger(__name__)
RUN_FORMAT = "leanlm.evolve.run"
RUN_VERSION = 1


class RunDirError(ValueError):
    """The run directory is missing, of another format, or inconsistent."""


def gen_dir(run: Path, g: int) -> Path:
    return Path(run) / f"gen-{g:03d}"


def init_run(run: Path, cfg: EvolveConfig) -> None:
    """Create ``run/run.json``; an existing run must have been made with the same config."""
    path = Path(run) / "run.json"
    for stale in [*Path(run).glob(".gen-*.tmp"), *Path(run).glob(".adapter-*")]:   # left by a killed run
        log.info("removing %s, left by an interrupted generation", stale)
        shutil.rmtree(stale, ignore_errors=True)
    if path.is_file():
        if load_config(run) != cfg:
            raise RunDirError(f"{run} holds a run with another config; use --resume {run} or a new --out")
        return
    atomic_write_json(path, {"format": RUN_FORMAT, "version": RUN_VERSION, "config": to_dict(cfg)})


def load_config(run: Path) -> EvolveConfig:
    path = Path(run) / "run.json"
    if not path.is_file():
        raise RunDirError(f"{run} is not an evolve run directory (no run.json)")
    doc = json.loads(path.read_text())
    if doc.get("format") != RUN_FORMAT or doc.get("version", 0) > RUN_VERSION:
        raise RunDirError(f"{path}: format {doc.get('format')!r} v{doc.get('version')} is not {RUN_FORMAT} v{RUN_VERSION}")
    return from_dict(EvolveConfig, doc["config"])


def records(run: Path) -> list[dict]:
    """The lineage of every complete generation, in order; a gap means a corrupt run."""
    out = []
    for d in sorted(Path(run).glob("gen-[0-9][0-9][0-9]")):
        rec = json.loads((d / "lineage.json").read_text())
        if rec["generation"] != len(out):
            raise RunDirError(f"{d}: expected generation {len(out)}, found {rec['generation']}")
        out.append(rec)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """JSON lines; gzip-compressed (deterministic: no name, mtime 0) when ``path`` ends in ``.gz``."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if str(path).endswith(".gz"):
        import gzip

        from ..fileio import atomic_write_bytes
        atomic_write_bytes(path, gzip.compress(text.encode(), compresslevel=9, mtime=0))
    else:
        atomic_write_text(path, text)


def read_rows(path: Path) -> list[dict]:
    """The rows of ``path`` (``x.jsonl``), or of ``x.jsonl.gz`` beside it; [] when neither exists."""
    path = Path(path)
    gz = path.with_name(path.name + ".gz")
    if path.is_file():
        text = path.read_text()
    elif gz.is_file():
        import gzip

        text = gzip.decompress(gz.read_bytes()).decode()
    else:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_examples(path: Path) -> list[Example]:
    return [Example(r["prompt"], r["completion"]) for r in read_rows(path) if r]


def save_generation(run: Path, record: dict, data: list[Example], pairs: list[dict], model=None, tok=None,
                    adapter_dir: Path | None = None) -> Path:
    """Write one generation directory atomically: data, pairs, adapter, merged model, then lineage.json."""
    target = gen_dir(run, record["generation"])
    with atomic_directory(target, overwrite=True) as tmp:
        write_jsonl(tmp / "data.jsonl.gz", [{"prompt": e.prompt, "completion": e.completion} for e in data])
        write_jsonl(tmp / "pairs.jsonl.gz", pairs)
        files = {n: sha256_file(tmp / n) for n in ("data.jsonl.gz", "pairs.jsonl.gz")}
        if adapter_dir is not None:
            shutil.copytree(adapter_dir, tmp / "adapter")
            (tmp / "adapter").chmod(0o755)            # a TemporaryDirectory copy would stay owner-only
        if model is not None:
            save_hf(model, tok, tmp / "model")
            files.update({f"model/{p.name}": sha256_file(p) for p in sorted((tmp / "model").glob("*.safetensors"))})
        record = {**record, "files": files, "has_model": model is not None, "has_adapter": adapter_dir is not None}
        atomic_write_json(tmp / "lineage.json", record)
    return target


def write_summary(run: Path, recs: list[dict]) -> None:
    """metrics.jsonl and progress.png, rebuilt from the lineage records."""
    rows = [{"generation": r["generation"], "accepted": r["accepted"], "parent": r["parent"],
             "wall_s": r.get("wall_s"), **r["metrics"]} for r in recs]
    write_jsonl(Path(run) / "metrics.jsonl", rows)
    plot(Path(run) / "progress.png", rows)


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    gens = [r["generation"] for r in rows]
    for key, label in (("headline", "held-out accuracy"), ("retention", "retention"), ("refusal_rate", "refusal rate")):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(gens, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    for r in rows:
        if not r["accepted"]:
            ax.axvline(r["generation"], color="red", alpha=0.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="generation (red: rolled back)", ylabel="rate", ylim=(-0.02, 1.02), title=path.parent.name)
    ax.legend(loc="best")
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as f:
        fig.savefig(f.name, dpi=100)
    plt.close(fig)
    Path(f.name).chmod(0o644)
    Path(f.name).replace(path)


def latest_accepted(recs: list[dict]) -> dict:
    return next(r for r in reversed(recs) if r["accepted"])


def model_path(run: Path, rec: dict) -> str:
    """Where a generation's merged model lives (generation 0 of the chat recipe is the spec itself)."""
    d = gen_dir(run, rec["generation"]) / "model"
    return str(d) if d.is_dir() else rec["model_source"]


# --------------------------------------------------------------------------- deltas of older generations
def _delta_codec():
    try:
        from ..compress.lossless.api import compress_delta, decompress_delta
    except ImportError:   # the lossless codec is optional: until it exists, generations stay plain directories
        return None
    return compress_delta, decompress_delta


def store_delta(run: Path, generation: int, parent_model: str) -> dict | None:
    """Encode a just-accepted generation's merged model as a lossless delta against its parent's (which is
    a plain directory at that moment). The plain model stays until ``prune``. None without the codec."""
    codec = _delta_codec()
    d = gen_dir(run, generation)
    if codec is None or not Path(parent_model).is_dir() or not (d / "model").is_dir():
        return None
    compress_delta, _ = codec
    result = compress_delta(d / "model", Path(parent_model), d / "model.delta")
    atomic_write_json(d / "delta.json", {"parent_model": str(parent_model), **result})
    return result


def prune(run: Path, recs: list[dict], keep: set[int]) -> list[int]:
    """Remove the plain merged model of accepted generations that have a delta and are not in ``keep``
    (the latest and the best). Generation 0 is the root of every chain and stays."""
    removed = []
    for r in recs:
        d = gen_dir(run, r["generation"])
        if r["generation"] not in keep and r["generation"] > 0 and (d / "delta.json").is_file() and (d / "model").is_dir():
            doomed = d / ".model.pruned"            # rename first: a kill mid-delete never leaves a partial model/
            shutil.rmtree(doomed, ignore_errors=True)
            (d / "model").rename(doomed)
            shutil.rmtree(doomed)
            removed.append(r["generation"])
    return removed


def restore_model(run: Path, recs: list[dict], generation: int, out: Path) -> dict:
    """Rebuild a pruned generation's merged model into ``out`` by walking its delta chain."""
    codec = _delta_codec()
    if codec is None:
        raise RunDirError("restoring a generation stored as a delta needs leanlm.compress.lossless")
    _, decompress_delta = codec
    d = gen_dir(run, generation)
    if (d / "model").is_dir():
        shutil.copytree(d / "model", out)
        return {"generation": generation, "plain": True}
    parent = recs[generation]["parent"]
    with tempfile.TemporaryDirectory(dir=run) as tmp:
        parent_dir = Path(tmp) / "parent"
        if isinstance(parent, int):
            restore_model(run, recs, parent, parent_dir)
        else:
            parent_dir = Path(json.loads((d / "delta.json").read_text())["parent_model"])
        return decompress_delta(d / "model.delta", parent_dir, out)

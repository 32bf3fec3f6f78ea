"""`manifest.json`: what an output folder holds and how it was made.

Every stage writes one. It records the stage (`kind`), counts, the sha256 of every
file in the folder, the command and resolved config, the toolkit's version and git
commit, and the hashes of its inputs. No timestamps: the same inputs and config give a
byte-identical manifest, so a rerun can be compared with `sha256sum`.
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


@functools.lru_cache(maxsize=1)
def toolkit_commit() -> str | None:
    """The git commit of the ddro checkout, when it runs from one."""
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


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
        "ddro_version": __version__,
        "ddro_commit": toolkit_commit(),
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

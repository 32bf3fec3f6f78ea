"""`ddro pipeline`: run every stage in order, skipping those whose outputs are complete.

Output layout (each stage writes one folder or file with its manifest)::

    OUT/collection/      the imported collection (BEIR layout + manifest)

Later stages add their folders here. A stage is skipped when its output folder exists
and its manifest says it was built from the same inputs and config; otherwise it is
rebuilt. Presets (`tiny`, `small`) fix every stage's settings.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import entry_point, parse_args
from .errors import DDROError
from .manifest import MANIFEST, read_manifest

log = logging.getLogger(__name__)

PRESETS = ("tiny", "small")


@dataclass
class PipelineArguments:
    collection: str = field(metadata={"help": "a BEIR-layout folder, or a BEIR dataset name "
                                              "(looked up in --collections-dir, else downloaded)"})
    output: str = field(metadata={"help": "folder for every stage's outputs"})
    preset: str = field(default="tiny", metadata={"help": f"settings for every stage: {', '.join(PRESETS)}"})
    collections_dir: str = field(default="resources/collections",
                                 metadata={"help": "where named collections are looked up"})


def _done(folder: Path, kind: str) -> bool:
    """A stage output counts as finished only when its manifest is there (written last)."""
    if not (folder / MANIFEST).is_file():
        return False
    read_manifest(folder, kind)
    return True


def import_collection(args: PipelineArguments, out: Path) -> Path:
    from .data.beir import BeirArguments, run

    target = out / "collection"
    if _done(target, "collection"):
        log.info("collection: %s is complete, skipping", target)
        return target
    src = Path(args.collection)
    named = Path(args.collections_dir) / args.collection
    if src.is_dir():
        beir = BeirArguments(out=str(target), path=str(src), overwrite=True)
    elif named.is_dir():
        beir = BeirArguments(out=str(target), path=str(named), overwrite=True)
    else:
        beir = BeirArguments(out=str(target), name=args.collection, overwrite=True)
    run(beir)
    return target


def run_pipeline(args: PipelineArguments) -> Path:
    if args.preset not in PRESETS:
        raise DDROError(f"unknown preset '{args.preset}' (choose from {', '.join(PRESETS)})")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    collection = import_collection(args, out)
    log.info("collection ready: %s", collection)
    return out


@entry_point
def main(argv=None):
    """Run the whole pipeline on one collection (stages already complete are skipped)."""
    (args,) = parse_args([PipelineArguments], argv, prog="ddro pipeline", description=main.__doc__)
    out = run_pipeline(args)
    print(f"pipeline outputs: {out.resolve()}")


if __name__ == "__main__":
    main()

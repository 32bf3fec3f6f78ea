"""`ddro model init`: write a constructed model before any training (a "zero-step" checkpoint).

With `--dense_prior ip|l2` this is the prior alone (the head starts at zero), which ranks
documents exactly as asymmetric PQ scoring of the encoder's embeddings: `ddro eval` it
to see where training starts. Any construction can be written this way; `ddro train sft
--init_from` accepts the folder as a fresh model.

Output: a checkpoint folder (`save_model`) + manifest kind "model_init" (inputs: the docid
table; config: the model arguments and seed).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..config import as_dict, entry_point, parse_args
from ..docids.table import DocidTable
from ..io import atomic_dir, check_output
from ..manifest import manifest_hash, write_manifest
from .build import ModelArguments, build_model, output_rows
from .checkpoint import save_model

log = logging.getLogger(__name__)

KIND = "model_init"


@dataclass
class InitArguments:
    docids: str = field(metadata={"help": "docid folder the model decodes"})
    out: str = field(metadata={"help": "checkpoint folder to write"})
    seed: int = field(default=42, metadata={"help": "seed of the randomly initialised parts"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})


def run(model_args: ModelArguments, args: InitArguments) -> dict:
    check_output(args.out, args.overwrite)
    table = DocidTable.load(args.docids)
    built = build_model(model_args, table, seed=args.seed)
    with atomic_dir(args.out, args.overwrite) as tmp:
        save_model(built.model, built.tokenizer, built.info, table, tmp)
        manifest = write_manifest(tmp, KIND, config=as_dict(model_args, args),
                                  inputs={"docids": manifest_hash(table.path)},
                                  counts={"decoder_rows": output_rows(built.model)})
    log.info("untrained %s model written to %s", model_args.construction, args.out)
    return manifest


@entry_point
def main(argv=None):
    """Write a constructed model before any training (with --dense_prior: the prior alone), for `ddro eval`."""
    model_args, args = parse_args([ModelArguments, InitArguments], argv, prog="ddro model init",
                                  description=main.__doc__)
    run(model_args, args)


if __name__ == "__main__":
    main()

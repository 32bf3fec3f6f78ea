#!/usr/bin/env bash
# Docid table of one encoding: $DATA/docids-<encoding> (shared by every setting of the dataset:
# a PQ setting also reads the TU table as its stage-1 "enhanced docid" input, and vice versa).
# PQ embeddings are cached in $DATA/cache/embeddings (scripts/data/embed.sh fills the cache in
# shards beforehand; otherwise this computes them). NPROC > 1: torchrun, one block per GPU.
# Usage: scripts/data/docids.sh DATASET [NAME] ENCODING
set -euo pipefail
USAGE="scripts/data/docids.sh DATASET [NAME] ENCODING"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting required "$@"
no_extra_args

config=$(stage_config docids "$DATA/configs/docids-$ENCODING.json")
entry ddro.docids.build docids
launch "${ENTRY[@]}" --config "$config" --collection "$COLLECTION" --encoding "$ENCODING" \
  --embed_cache "$DATA/cache/embeddings" --out "$DOCIDS"

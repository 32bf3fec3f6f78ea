#!/usr/bin/env bash
# Pseudo-queries of every document (stage-2 inputs): $DATA/pseudo_queries. Rerunning an interrupted
# doc2query run resumes it (`ddro pseudo-queries` keeps finished batches). NPROC > 1 runs torchrun,
# one block of documents per GPU; DDRO_NUM_SHARDS / DDRO_SHARD_INDEX split them across array tasks.
# Usage: scripts/data/pseudo_queries.sh DATASET [NAME] [ENCODING]   (ENCODING only picks the config)
set -euo pipefail
USAGE="scripts/data/pseudo_queries.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args

config=$(stage_config pseudo_queries "$DATA/configs/pseudo_queries.json")
entry ddro.pseudo_queries pseudo-queries
launch "${ENTRY[@]}" --config "$config" --collection "$COLLECTION" --out "$DATA/pseudo_queries"

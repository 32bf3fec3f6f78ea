#!/usr/bin/env bash
# BM25 baseline on $SPLIT: $DATA/bm25-<split> (run.trec, metrics.json, per_query.csv).
# Usage: scripts/bm25/bm25.sh DATASET [NAME] [ENCODING]   (ENCODING only picks the config)
set -euo pipefail
USAGE="scripts/bm25/bm25.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args

config=$(stage_config bm25 "$DATA/configs/bm25.json")
launch ddro bm25 --config "$config" --collection "$COLLECTION" --split "$SPLIT" --out "$DATA/bm25-$SPLIT"

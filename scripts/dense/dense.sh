#!/usr/bin/env bash
# Dense baseline on $SPLIT: $DATA/dense-<split> (run.trec, metrics.json, per_query.csv), with the
# docids section's embedder settings and embedding cache ($DATA/cache/embeddings), so the document
# vectors the PQ docids were built from (docids.sh, embed.sh) are read back, not recomputed.
# Usage: scripts/dense/dense.sh DATASET [NAME] [ENCODING]   (ENCODING only picks the config)
set -euo pipefail
USAGE="scripts/dense/dense.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args

config=$(stage_config docids "$DATA/configs/dense.json" embedder embed_fields embed_max_length embed_batch_size)
length=()  # docids without embed_max_length read the model's own length: 0 says the same to ddro dense
grep -q '"embed_max_length"' "$config" || length=(--embed_max_length 0)
launch ddro dense --config "$config" "${length[@]}" --collection "$COLLECTION" --split "$SPLIT" \
  --embed_cache "$DATA/cache/embeddings" --out "$DATA/dense-$SPLIT"

#!/usr/bin/env bash
# SFT training files (stages 1-3) and eval files of one setting: $OUT/instances.
# Stage 1's "enhanced docid" input is the other encoding's table ($DATA/docids-$OTHER_ENCODING:
# tu for pq, pq for tu, as in the paper; none for beir and atomic; OTHER_ENCODING= for none).
# Usage: scripts/data/instances.sh DATASET [NAME] ENCODING
set -euo pipefail
USAGE="scripts/data/instances.sh DATASET [NAME] ENCODING"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting required "$@"
no_extra_args
other_encoding

config=$(stage_config instances "$OUT/configs/instances.json")
other_args=()
if [[ -n $OTHER ]]; then other_args=(--other_docids "$DATA/docids-$OTHER"); fi
launch ddro instances --config "$config" --collection "$COLLECTION" --docids "$DOCIDS" \
  --pseudo_queries "$DATA/pseudo_queries" "${other_args[@]}" --out "$OUT/instances"

#!/usr/bin/env bash
# Build a dataset's collection (BEIR layout, with Punkt sentences) into $COLLECTION.
#   msmarco: `ddro data msmarco` from the raw files in $RAW_DIR (scripts/data/download_msmarco.sh)
#   nq:      `ddro data nq` from the raw files in $RAW_DIR (scripts/data/download_nq.sh)
#   beir:    `ddro data beir` from a BEIR-layout folder NAME, or the BEIR dataset called NAME
# Usage: scripts/data/build_collection.sh DATASET [NAME] [ENCODING]
# The collection is shared by every encoding; ENCODING only picks the config file.
# Environment: RAW_DIR (default resources/downloads/<dataset>), and those in scripts/lib.sh.
set -euo pipefail
USAGE="scripts/data/build_collection.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args

config=$(stage_config collection "$DATA/configs/collection.json")
case $DATASET in
  msmarco|nq)
    launch ddro data "$DATASET" --config "$config" --raw_dir "${RAW_DIR:-resources/downloads/$DATASET}" \
      --out "$COLLECTION" ;;
  beir)
    if [[ -d $NAME ]]; then source_args=(--path "$NAME"); else source_args=(--name "$NAME"); fi
    launch ddro data beir --config "$config" "${source_args[@]}" --out "$COLLECTION" ;;
esac

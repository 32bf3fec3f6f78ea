#!/usr/bin/env bash
# Phase 2 data: BM25 hard negatives of every train query: $DATA/negatives (shared by the encodings).
# NEGATIVES_FROM=pseudo trains on pseudo-queries instead (collections without train queries;
# beyond the paper).
# Usage: scripts/ddro/negatives.sh DATASET [NAME] [ENCODING]   (ENCODING only picks the config)
set -euo pipefail
USAGE="scripts/ddro/negatives.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args

config=$(stage_config negatives "$DATA/configs/negatives.json")
query_args=()
case ${NEGATIVES_FROM:-collection} in
  collection) ;;
  pseudo) query_args=(--queries pseudo --pseudo_queries "$DATA/pseudo_queries") ;;
  *) usage "NEGATIVES_FROM must be collection or pseudo, got '$NEGATIVES_FROM'" ;;
esac
launch ddro negatives --config "$config" --collection "$COLLECTION" "${query_args[@]}" --out "$DATA/negatives"

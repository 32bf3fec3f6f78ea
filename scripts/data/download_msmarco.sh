#!/usr/bin/env bash
# Download the raw MS MARCO v1 document-ranking files that `ddro data msmarco` reads.
# Usage: scripts/data/download_msmarco.sh [DIR]     (default: resources/downloads/msmarco)
# About 8.5 GB (msmarco-docs.tsv.gz is 8 GB). Files already present are kept; an
# interrupted download resumes from its .part file.
set -euo pipefail

DIR="${1:-resources/downloads/msmarco}"
BASE="${MSMARCO_BASE_URL:-https://msmarco.z22.web.core.windows.net/msmarcoranking}"
FILES=(
  msmarco-docs.tsv.gz
  msmarco-doctrain-queries.tsv.gz
  msmarco-doctrain-qrels.tsv.gz
  msmarco-docdev-queries.tsv.gz
  msmarco-docdev-qrels.tsv.gz
)

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

run mkdir -p "$DIR"
for name in "${FILES[@]}"; do
  fetch "$BASE/$name" "$DIR/$name"
done
echo "MS MARCO raw files in $DIR; next: ddro data msmarco --raw-dir $DIR --out <collection>" >&2

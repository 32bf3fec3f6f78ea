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

run() { echo "+ $*" >&2; "$@"; }

fetch() {  # fetch URL DEST: skip when DEST exists, else download to DEST.part and rename
  local url=$1 dest=$2
  if [[ -s $dest ]]; then
    echo "already there: $dest" >&2
    return
  fi
  if command -v curl >/dev/null; then
    run curl -fL --retry 3 -C - -o "$dest.part" "$url"
  else
    run wget -c -O "$dest.part" "$url"
  fi
  run mv "$dest.part" "$dest"
}

run mkdir -p "$DIR"
for name in "${FILES[@]}"; do
  fetch "$BASE/$name" "$DIR/$name"
done
echo "MS MARCO raw files in $DIR; next: ddro data msmarco --raw-dir $DIR --out <collection>" >&2

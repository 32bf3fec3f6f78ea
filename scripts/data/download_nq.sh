#!/usr/bin/env bash
# Download the raw Natural Questions files that `ddro data nq` reads.
# Usage: scripts/data/download_nq.sh [DIR]     (default: resources/downloads/nq)
#   simplified-nq-train.jsonl.gz  gs://natural_questions/v1.0-simplified/ (about 4.5 GB)
#   nq-dev-all.jsonl.gz           the five full-format dev shards gs://natural_questions/v1.0/dev/
#                                 nq-dev-0{0..4}.jsonl.gz concatenated in order (a gzip file may
#                                 hold several members); the NCI/DDRO reference used the same
#                                 dev set as one file, v1.0-simplified/nq-dev-all.jsonl.gz.
# Files already present are kept; an interrupted download resumes from its .part file.
set -euo pipefail

DIR="${1:-resources/downloads/nq}"
BASE="${NQ_BASE_URL:-https://storage.googleapis.com/natural_questions}"
DEV_SHARDS=(nq-dev-00 nq-dev-01 nq-dev-02 nq-dev-03 nq-dev-04)

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

run mkdir -p "$DIR/dev-shards"
fetch "$BASE/v1.0-simplified/simplified-nq-train.jsonl.gz" "$DIR/simplified-nq-train.jsonl.gz"

if [[ -s $DIR/nq-dev-all.jsonl.gz ]]; then
  echo "already there: $DIR/nq-dev-all.jsonl.gz" >&2
else
  shards=()
  for shard in "${DEV_SHARDS[@]}"; do
    fetch "$BASE/v1.0/dev/$shard.jsonl.gz" "$DIR/dev-shards/$shard.jsonl.gz"
    shards+=("$DIR/dev-shards/$shard.jsonl.gz")
  done
  echo "+ cat ${shards[*]} > $DIR/nq-dev-all.jsonl.gz" >&2
  cat "${shards[@]}" > "$DIR/nq-dev-all.jsonl.gz.part"
  run mv "$DIR/nq-dev-all.jsonl.gz.part" "$DIR/nq-dev-all.jsonl.gz"
fi
echo "NQ raw files in $DIR; next: ddro data nq --raw-dir $DIR --out <collection>" >&2

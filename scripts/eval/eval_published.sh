#!/usr/bin/env bash
# Evaluate the authors' published DDRO checkpoints on their published test sets (Hugging Face Hub):
#   model      kiyam/ddro-<dataset>-<encoding>
#   docids     dataset kiyam/ddro-docids, file <encoding>_<dataset>_docids.txt
#   test file  dataset kiyam/ddro-testsets (pre-tokenized dev queries, t5 max length 128)
# `hf:dataset:REPO:FILE` names a file of a Hub dataset repository. Writes $OUT/eval/published-dev.
# Usage: scripts/eval/eval_published.sh DATASET ENCODING     (msmarco | nq, pq | tu)
set -euo pipefail
USAGE="scripts/eval/eval_published.sh DATASET ENCODING   (DATASET msmarco | nq, ENCODING pq | tu)"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
case ${1:-} in msmarco|nq) ;; *) usage "published checkpoints exist for msmarco and nq only" ;; esac
setting required "$@"
no_extra_args

case $DATASET/$ENCODING in
  msmarco/pq|msmarco/tu)
    test_file=msmarco/test_data_top_300k/query_dev.t5_128_1.$ENCODING.top_300k.json ;;
  nq/pq|nq/tu)
    # Best guess: the MS MARCO file name without the top-300k suffix, under nq/test_data/.
    test_file=nq/test_data/query_dev.t5_128_1.$ENCODING.json ;;
  *) usage "published checkpoints exist for msmarco and nq with pq or tu only" ;;
esac

config=$(stage_config eval "$OUT/configs/eval.json")  # the paper's beam size for this setting
launch ddro eval --config "$config" --model "kiyam/ddro-$DATASET-$ENCODING" \
  --docids "hf:dataset:kiyam/ddro-docids:${ENCODING}_${DATASET}_docids.txt" \
  --test_file "hf:dataset:kiyam/ddro-testsets:$test_file" \
  --tag published --out "$OUT/eval/published-dev"

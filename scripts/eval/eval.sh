#!/usr/bin/env bash
# Trie-constrained beam search of a trained model on $SPLIT: $OUT/eval/<model>-<split>
# (run.trec, metrics.json, per_query.csv). MODEL is sft or ddro (default ddro), i.e. $OUT/sft or
# $OUT/ddro; CHECKPOINT=<folder> evaluates another checkpoint under that name.
# NPROC > 1 runs torchrun: each GPU decodes its own block of queries, rank 0 merges. In a SLURM
# array, DDRO_NUM_SHARDS / DDRO_SHARD_INDEX (scripts/slurm/eval.sbatch) split the queries further.
# Usage: scripts/eval/eval.sh DATASET [NAME] ENCODING [sft|ddro]
set -euo pipefail
USAGE="scripts/eval/eval.sh DATASET [NAME] ENCODING [sft|ddro]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting required "$@"
model=${REST[0]:-ddro}
case $model in sft|ddro) ;; *) usage "unknown model '$model' (sft or ddro)" ;; esac
[[ ${#REST[@]} -le 1 ]] || usage "unexpected arguments: ${REST[*]:1}"

config=$(stage_config eval "$OUT/configs/eval.json")
entry ddro.eval.evaluate eval
launch "${ENTRY[@]}" --config "$config" --model "${CHECKPOINT:-$OUT/$model}" --docids "$DOCIDS" \
  --instances "$OUT/instances" --split "$SPLIT" --tag "$model" --out "$OUT/eval/$model-$SPLIT"

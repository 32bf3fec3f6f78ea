#!/usr/bin/env bash
# Phase 1: three-stage SFT (doc, pseudo-query, query -> docid) into $OUT/sft.
# NPROC > 1 runs torchrun over NPROC GPUs of this node (DDP). An existing $OUT/sft (an interrupted
# or requeued run) is continued with --resume: finished stages are reused, the running stage
# resumes from its last checkpoint.
# Usage: scripts/sft/train_sft.sh DATASET [NAME] ENCODING
set -euo pipefail
USAGE="scripts/sft/train_sft.sh DATASET [NAME] ENCODING"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting required "$@"
no_extra_args

config=$(stage_config sft "$OUT/configs/sft.json")
entry ddro.train.sft train sft
resume=()
if [[ -d $OUT/sft ]]; then resume=(--resume true); fi
launch "${ENTRY[@]}" --config "$config" --instances "$OUT/instances" --docids "$DOCIDS" \
  --output_dir "$OUT/sft" "${resume[@]}"

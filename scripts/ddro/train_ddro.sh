#!/usr/bin/env bash
# Phase 2: DDRO from the SFT checkpoint ($OUT/sft) with the negatives of negatives.sh ($DATA/negatives,
# or $OUT/negatives when mined with the model): $OUT/ddro.
# NPROC > 1 runs torchrun over NPROC GPUs of this node. Trainer checkpoints live in
# $OUT/ddro.trainer; when it holds one (an interrupted or requeued run) the run resumes from it.
# Usage: scripts/ddro/train_ddro.sh DATASET [NAME] ENCODING
set -euo pipefail
USAGE="scripts/ddro/train_ddro.sh DATASET [NAME] ENCODING"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting required "$@"
no_extra_args
negatives_setting

config=$(stage_config ddro "$OUT/configs/ddro.json")
entry ddro.train.ddro train ddro
resume=()
if compgen -G "$OUT/ddro.trainer/checkpoint-*" >/dev/null; then resume=(--resume true); fi
launch "${ENTRY[@]}" --config "$config" --checkpoint "$OUT/sft" --docids "$DOCIDS" \
  --negatives "$NEGATIVES" --output_dir "$OUT/ddro" "${resume[@]}"

#!/usr/bin/env bash
# The whole DDRO chain for one setting, stage by stage through the launchers in scripts/:
#   download (msmarco, nq) -> collection -> docids (+ the other encoding's, for stage 1) ->
#   pseudo-queries -> instances -> SFT -> BM25 baseline -> SFT eval -> negatives -> DDRO -> DDRO eval
# Resumable: a stage whose output is complete (its done marker exists: manifest.json, or final.json
# for SFT) is skipped and said so; an interrupted SFT, DDRO or doc2query run continues where it
# stopped (the stages' own resume). Rerun the same command after a failure.
# Usage: scripts/run_paper.sh DATASET [NAME] ENCODING
#   e.g. NPROC=8 scripts/run_paper.sh msmarco pq;  DRY_RUN=1 scripts/run_paper.sh nq tu > plan.sh
# Environment: see scripts/lib.sh (ROOT, DATA, OUT, CONFIG, SPLIT, NPROC, DRY_RUN, ...) and
# RAW_DIR (default resources/downloads/<dataset>) for the raw MS MARCO / NQ files.
set -euo pipefail
USAGE="scripts/run_paper.sh DATASET [NAME] ENCODING"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
setting required "$@"
no_extra_args
other_encoding
negatives_setting

step() {  # step NAME FOLDER MARKER LAUNCHER [ARGS...]: run the launcher unless FOLDER/MARKER exists
  local name=$1 folder=$2 marker=$3
  shift 3
  if stage_done "$folder" "$marker"; then
    echo "== skip $name: $folder/$marker exists" >&2
    return
  fi
  echo "== $name" >&2
  "$@"
}

S=$SCRIPTS_DIR
if [[ $DATASET != beir ]] && ! stage_done "$COLLECTION" manifest.json; then
  echo "== download" >&2
  launch "$S/data/download_$DATASET.sh" "${RAW_DIR:-resources/downloads/$DATASET}"
fi
step collection "$COLLECTION" manifest.json "$S/data/build_collection.sh" "${SETTING[@]}"
step "docids ($ENCODING)" "$DOCIDS" manifest.json "$S/data/docids.sh" "${SETTING[@]}"
if [[ -n $OTHER ]]; then
  step "docids ($OTHER, stage-1 input)" "$DATA/docids-$OTHER" manifest.json \
    "$S/data/docids.sh" "${SETTING[@]:0:${#SETTING[@]}-1}" "$OTHER"
fi
step pseudo-queries "$DATA/pseudo_queries" manifest.json "$S/data/pseudo_queries.sh" "${SETTING[@]}"
step instances "$OUT/instances" manifest.json "$S/data/instances.sh" "${SETTING[@]}"
step sft "$OUT/sft" final.json "$S/sft/train_sft.sh" "${SETTING[@]}"
step bm25 "$DATA/bm25-$SPLIT" manifest.json "$S/bm25/bm25.sh" "${SETTING[@]}"
step "eval sft" "$OUT/eval/sft-$SPLIT" manifest.json "$S/eval/eval.sh" "${SETTING[@]}" sft
step negatives "$NEGATIVES" manifest.json "$S/ddro/negatives.sh" "${SETTING[@]}"
step ddro "$OUT/ddro" manifest.json "$S/ddro/train_ddro.sh" "${SETTING[@]}"
step "eval ddro" "$OUT/eval/ddro-$SPLIT" manifest.json "$S/eval/eval.sh" "${SETTING[@]}" ddro
echo "== done: $DATA/bm25-$SPLIT/metrics.json, $OUT/eval/{sft,ddro}-$SPLIT/metrics.json" >&2

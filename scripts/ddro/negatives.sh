#!/usr/bin/env bash
# Phase 2 data: hard negatives of every train query from the config's negatives section.
# BM25 (the paper) or dense negatives go to $DATA/negatives (shared by the encodings); a source that
# mines with the model (model, or mixed with model) reads this setting's SFT checkpoint ($OUT/sft) and
# docids and writes $OUT/negatives. Environment (beyond the paper; see scripts/lib.sh):
#   NEGATIVES_SOURCE  bm25 | model | dense | mixed     (--source; default: the config's, else bm25)
#   NEGATIVES_MIX     e.g. bm25:0.5,model:0.5           (--mix, with mixed)
#   NEGATIVES_FROM    collection | pseudo | both        (--queries; pseudo: collections without train queries)
#   PSEUDO_SHARE      e.g. 0.5                          (--pseudo_share, with NEGATIVES_FROM=both)
# A dense source reads the docids section's embedder settings and embedding cache, as dense.sh does.
# Usage: scripts/ddro/negatives.sh DATASET [NAME] [ENCODING]   (ENCODING picks the config, and the
#        SFT checkpoint a model source mines with)
set -euo pipefail
USAGE="scripts/ddro/negatives.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args
negatives_setting

configs=$(dirname "$NEGATIVES")/configs
config=$(stage_config negatives "$configs/negatives.json")
args=()
[[ -z ${NEGATIVES_SOURCE:-} ]] || args+=(--source "$NEGATIVES_SOURCE")
[[ -z ${NEGATIVES_MIX:-} ]] || args+=(--mix "$NEGATIVES_MIX")
case ${NEGATIVES_FROM:-collection} in
  collection) ;;
  pseudo|both) args+=(--queries "$NEGATIVES_FROM" --pseudo_queries "$DATA/pseudo_queries") ;;
  *) usage "NEGATIVES_FROM must be collection, pseudo or both, got '$NEGATIVES_FROM'" ;;
esac
[[ -z ${PSEUDO_SHARE:-} ]] || args+=(--pseudo_share "$PSEUDO_SHARE")
if [[ -n $NEG_MODEL ]]; then
  args+=(--checkpoint "$OUT/sft" --docids "$DOCIDS")
fi
if [[ -n $NEG_DENSE ]]; then  # the docids' embeddings, unless the negatives section sets its own
  embedding=$(stage_config docids "$configs/negatives-embedding.json" embedder embed_fields embed_max_length \
    embed_batch_size)
  grep -q '"embed_max_length"' "$embedding" || args+=(--embed_max_length 0)  # the model's own, as docids read
  config=$(merge_configs "$configs/negatives.json" "$embedding" "$config")
  args+=(--embed_cache "$DATA/cache/embeddings")
fi
launch ddro negatives --config "$config" --collection "$COLLECTION" "${args[@]}" --out "$NEGATIVES"

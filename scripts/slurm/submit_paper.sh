#!/usr/bin/env bash
# Submit the whole DDRO chain of one setting as SLURM jobs, each started only when the jobs it
# reads from succeeded (--dependency=afterok). Stages whose output is already complete are not
# submitted (same done markers as scripts/run_paper.sh).
#   collection -> [PQ: embeddings (array of SHARDS tasks)] -> docids (and the other encoding's)
#   collection -> pseudo-queries (array of SHARDS tasks)
#              -> instances -> SFT (torchrun, NPROC GPUs) -> eval SFT (array)
#   collection -> BM25;  collection -> negatives;  SFT + negatives -> DDRO (torchrun) -> eval DDRO (array)
#   (negatives mined with the model, NEGATIVES_SOURCE or the config: after SFT, on one GPU; from
#   pseudo-queries, NEGATIVES_FROM pseudo or both: after them)
# In an array, each task writes its shard and the task that completes the set merges them into
# the output, so the next job depends on the whole array (afterok on an array waits for every task).
# Usage: scripts/slurm/submit_paper.sh DATASET [NAME] ENCODING     (from any directory)
# Environment: SHARDS (8; array tasks of embeddings, pseudo-queries and eval), NPROC (4, GPUs of the SFT and DDRO jobs),
# SBATCH_ARGS (extra sbatch options, e.g. "--partition=gpu --account=abc"), DRY_RUN=1 (print the
# sbatch commands with made-up job ids, submit nothing), and those of scripts/lib.sh.
set -euo pipefail
USAGE="scripts/slurm/submit_paper.sh DATASET [NAME] ENCODING"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting required "$@"
no_extra_args
other_encoding
negatives_setting
cd "$REPO_DIR"  # the jobs find the repository through their submission directory
mkdir -p logs

SHARDS=${SHARDS:-8}
NPROC=${NPROC:-4}
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || usage "SHARDS must be a positive integer, got '$SHARDS'"
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || usage "NPROC must be a positive integer, got '$NPROC'"
read -r -a extra <<< "${SBATCH_ARGS:-}"
env_base="ALL,DATASET=$DATASET,NAME=$NAME"
dry_ids=0

submit() {  # submit VAR "DEP DEP..." SBATCH_OPTIONS... SCRIPT: submit a job, its id into VAR
  local var=$1 deps=() dep id
  for dep in $2; do deps+=("$dep"); done
  shift 2
  local dependency=()
  if (( ${#deps[@]} )); then
    dependency=("--dependency=afterok:$(IFS=:; echo "${deps[*]}")")
  fi
  local cmd=(sbatch --parsable "${extra[@]}" "${dependency[@]}" "$@")
  show "${cmd[@]}"
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    dry_ids=$((dry_ids + 1))
    id=$dry_ids
  else
    id=$("${cmd[@]}")
    id=${id%%;*}  # --parsable prints "id" or "id;cluster"
  fi
  printf -v "$var" '%s' "$id"
}

sharded() {  # sharded VAR "DEPS" SBATCH_OPTIONS... SCRIPT: an array of SHARDS tasks
  local var=$1 deps=$2
  shift 2
  submit "$var" "$deps" --array="0-$((SHARDS - 1))" "$@"
}

S=scripts/slurm
enc="$env_base,ENCODING=$ENCODING"
collection="" docids="" other_docids="" pseudo="" instances="" sft="" negatives="" ddro=""
stage_done "$COLLECTION" manifest.json || submit collection "" --export="$env_base" $S/collection.sbatch
docids_job() {  # docids_job VAR ENCODING: PQ embeds in an array job first, then k-means in one task
  local embed=""
  if [[ $2 == pq ]]; then
    sharded embed "$collection" --export="$env_base,ENCODING=$2" $S/embed.sbatch
  fi
  submit "$1" "$collection $embed" --export="$env_base,ENCODING=$2" $S/docids.sbatch
}
stage_done "$DOCIDS" manifest.json || docids_job docids "$ENCODING"
if [[ -n $OTHER ]] && ! stage_done "$DATA/docids-$OTHER" manifest.json; then
  docids_job other_docids "$OTHER"
fi
stage_done "$DATA/pseudo_queries" manifest.json ||
  sharded pseudo "$collection" --export="$enc" $S/pseudo_queries.sbatch
stage_done "$OUT/instances" manifest.json ||
  submit instances "$collection $docids $other_docids $pseudo" --export="$enc" $S/instances.sbatch
stage_done "$OUT/sft" final.json ||
  submit sft "$instances" --gres="gpu:$NPROC" --export="$enc,NPROC=$NPROC" $S/sft.sbatch
stage_done "$DATA/bm25-$SPLIT" manifest.json || submit bm25 "$collection" --export="$enc" $S/bm25.sbatch
stage_done "$OUT/eval/sft-$SPLIT" manifest.json ||
  sharded eval_sft "$sft" --export="$enc,MODEL=sft" $S/eval.sbatch
negatives_deps=$collection negatives_gpu=()
case ${NEGATIVES_FROM:-collection} in pseudo|both) negatives_deps+=" $pseudo" ;; esac
if [[ -n $NEG_MODEL ]]; then negatives_deps+=" $sft" negatives_gpu=(--gres=gpu:1); fi
stage_done "$NEGATIVES" manifest.json ||
  submit negatives "$negatives_deps" "${negatives_gpu[@]}" --export="$enc" $S/negatives.sbatch
stage_done "$OUT/ddro" manifest.json ||
  submit ddro "$sft $negatives" --gres="gpu:$NPROC" --export="$enc,NPROC=$NPROC" $S/ddro.sbatch
stage_done "$OUT/eval/ddro-$SPLIT" manifest.json ||
  sharded eval_ddro "$ddro" --export="$enc,MODEL=ddro" $S/eval.sbatch
echo "submitted; logs in $REPO_DIR/logs/ (squeue -u \$USER)" >&2

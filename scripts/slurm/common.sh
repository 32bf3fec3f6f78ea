# Sourced by every scripts/slurm/*.sbatch. SLURM runs a copy of the batch script, so the jobs
# find the repository through the submission directory: submit from the repository root.
# Job environment: DATASET (msmarco | nq | beir), NAME (beir only), ENCODING (pq | tu | atomic),
# NPROC (GPUs for torchrun: the GPUs SLURM gave the job, else $NPROC, else 1), VENV (default .venv),
# and everything scripts/lib.sh reads (ROOT, DATA, OUT, CONFIG, SPLIT, DRY_RUN, ...).
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
if [[ ! -f scripts/lib.sh ]]; then
  echo "error: $(pwd) is not the ddro repository: submit from its root" >&2
  exit 2
fi
if [[ -n ${VENV:-} || -d .venv ]]; then
  source "${VENV:-.venv}/bin/activate"
fi
: "${DATASET:?set DATASET=msmarco|nq|beir (beir: also NAME)}"
SETTING=("$DATASET" ${NAME:+"$NAME"} ${ENCODING:+"$ENCODING"})
export NPROC=${SLURM_GPUS_ON_NODE:-${NPROC:-1}}

shard_env() {  # in an array job of N > 1 tasks: export this task's shard (0-based) and N
  local count=${SLURM_ARRAY_TASK_COUNT:-1}
  if (( count > 1 )); then
    export DDRO_SHARD_INDEX=$(( SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0} ))
    export DDRO_NUM_SHARDS=$count
    echo "shard $DDRO_SHARD_INDEX of $DDRO_NUM_SHARDS" >&2
  fi
}

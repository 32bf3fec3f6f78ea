#!/usr/bin/env bash
# Fill the PQ embedding cache ($DATA/cache/embeddings) that `ddro docids --encoding pq` reads, with
# the docids section's embedder settings. Optional: docids.sh embeds by itself; this one shards.
# NPROC > 1 runs torchrun (one block per GPU); in a SLURM array (scripts/slurm/embed.sbatch) each task
# embeds its shard (DDRO_NUM_SHARDS / DDRO_SHARD_INDEX) and the one that completes the set merges.
# Usage: scripts/data/embed.sh DATASET [NAME] [ENCODING]   (ENCODING only picks the config: pq)
set -euo pipefail
USAGE="scripts/data/embed.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args

config=$(stage_config docids "$DATA/configs/embed.json" embedder embed_fields embed_max_length embed_batch_size)
entry ddro.docids.embed docids embed
launch "${ENTRY[@]}" --config "$config" --collection "$COLLECTION" --embed_cache "$DATA/cache/embeddings"

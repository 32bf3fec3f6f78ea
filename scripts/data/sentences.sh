#!/usr/bin/env bash
# Add Punkt sentence splits to a collection built with `--sentences false` (the builders add them
# by default). Writes $SENTENCES_OUT (default $COLLECTION-sents); point later stages at it with
# COLLECTION=<that folder>.
# Usage: scripts/data/sentences.sh DATASET [NAME] [ENCODING]
set -euo pipefail
USAGE="scripts/data/sentences.sh DATASET [NAME] [ENCODING]"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
setting optional "$@"
no_extra_args

launch ddro data sentences --collection "$COLLECTION" --out "${SENTENCES_OUT:-$COLLECTION-sents}"

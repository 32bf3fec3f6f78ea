# Shared helpers for the launchers: `source "$(dirname "$0")/../lib.sh"`.

run() { echo "+ $*" >&2; "$@"; }  # print what runs, then run it

fetch() {  # fetch URL DEST: skip when DEST exists, else download to DEST.part and rename
  local url=$1 dest=$2
  if [[ -s $dest ]]; then
    echo "already there: $dest" >&2
    return
  fi
  if command -v curl >/dev/null; then
    run curl -fL --retry 3 -C - -o "$dest.part" "$url"
  else
    run wget -c -O "$dest.part" "$url"
  fi
  run mv "$dest.part" "$dest"
}

# ---------------------------------------------------------------------------
# Stage launchers (scripts/{data,sft,ddro,eval,bm25}/*.sh, scripts/run_paper.sh)
#
# Every launcher takes a setting: DATASET [NAME] [ENCODING] [EXTRA...]
#   DATASET   msmarco | nq | beir NAME   (NAME: a BEIR dataset name or a BEIR-layout folder)
#   ENCODING  pq | tu | atomic
# and composes paths from these environment variables:
#   ROOT        resources/paper                     everything below lives here
#   DATA        $ROOT/<dataset>                     shared by every encoding: collection, docids-<enc>,
#                                                   pseudo_queries, negatives, bm25, embedding cache
#   OUT         $ROOT/<dataset>-<encoding>          one setting: instances, sft, ddro, eval/{sft,ddro}
#   COLLECTION  $DATA/collection
#   CONFIG      configs/paper/<dataset>-<encoding>.yaml   settings; one section per stage (any preset
#                                                   file or name that `ddro pipeline --preset` takes)
#   SPLIT       dev (msmarco, nq) / test (beir)     split evaluated
#   NPROC       1                                   GPUs to use: >1 runs torchrun (SFT, DDRO: DDP;
#                                                   eval, pseudo-queries: one shard per rank)
#   OTHER_ENCODING  tu for pq, pq for tu (msmarco, nq; none for beir/atomic): the stage-1
#                                                   "enhanced docid" input; empty: none
#   PYTHON      python                              the interpreter with ddro installed
#   DRY_RUN     0                                   1: print the commands, run nothing (stage
#                                                   config files are still written)
#   NEGATIVES_SOURCE, NEGATIVES_MIX  the config's      `ddro negatives --source/--mix`: bm25 (the paper),
#               negatives section, else bm25        model, dense, mixed. Negatives mined with the model
#                                                   belong to one setting: $OUT/negatives ($DATA/negatives
#                                                   otherwise, shared by the encodings)
#   NEGATIVES_FROM  collection                      training queries: collection, pseudo, both
#   PSEUDO_SHARE    (unset)                         with NEGATIVES_FROM=both: `--pseudo_share`
# ---------------------------------------------------------------------------

SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPTS_DIR")
ENCODINGS=(pq tu atomic)

usage() {  # usage MESSAGE: the error, the calling launcher's $USAGE, exit 2
  echo "error: $1" >&2
  echo "usage: ${USAGE:-$(basename "$0") DATASET [NAME] ENCODING}" >&2
  echo "  DATASET: msmarco | nq | beir NAME;  ENCODING: ${ENCODINGS[*]}" >&2
  exit 2
}

setting() {  # setting required|optional "$@": DATASET NAME TAG ENCODING REST, then the paths
  local encoding_arg=$1
  shift
  DATASET=${1:-}
  NAME=""
  [[ $# -gt 0 ]] || usage "missing DATASET"
  shift
  case $DATASET in
    msmarco|nq) TAG=$DATASET ;;
    beir)
      [[ $# -gt 0 && -n $1 && $1 != -* && " ${ENCODINGS[*]} " != *" $1 "* ]] ||
        usage "beir needs a dataset NAME (a BEIR name or folder) before the encoding"
      NAME=$1
      shift
      TAG=beir-$(basename "$NAME")
      ;;
    *) usage "unknown dataset '$DATASET'" ;;
  esac
  ENCODING=${1:-}
  if [[ " ${ENCODINGS[*]} " == *" $ENCODING "* && -n $ENCODING ]]; then
    shift
  elif [[ -z $ENCODING && $encoding_arg == optional ]]; then
    ENCODING=pq  # this stage does not depend on the encoding: it only picks the config file
  elif [[ -z $ENCODING ]]; then
    usage "missing ENCODING"
  else
    usage "unknown encoding '$ENCODING'"
  fi
  REST=("$@")
  SETTING=("$DATASET" ${NAME:+"$NAME"} "$ENCODING")  # the arguments again, for other launchers

  ROOT=${ROOT:-resources/paper}
  DATA=${DATA:-$ROOT/$TAG}
  OUT=${OUT:-$ROOT/$TAG-$ENCODING}
  COLLECTION=${COLLECTION:-$DATA/collection}
  DOCIDS=$DATA/docids-$ENCODING
  if [[ $DATASET == beir ]]; then SPLIT=${SPLIT:-test}; else SPLIT=${SPLIT:-dev}; fi
  CONFIG=${CONFIG:-$REPO_DIR/configs/paper/$TAG-$ENCODING.yaml}
  if [[ $CONFIG == */* || $CONFIG == *.yaml ]] && [[ ! -f $CONFIG ]]; then
    echo "error: no config $CONFIG (the paper has settings for msmarco and nq with pq or tu only);" \
         "set CONFIG to a preset file or name, e.g. CONFIG=small or a copy of configs/paper/msmarco-pq.yaml" >&2
    exit 2
  fi
}

no_extra_args() {  # fail on arguments left after the setting
  [[ ${#REST[@]} -eq 0 ]] || usage "unexpected arguments: ${REST[*]}"
}

stage_config() {  # stage_config SECTION FILE [KEY...]: write $CONFIG's SECTION (only KEYs, if given)
  local section=$1 file=$2  # to FILE as JSON, and print FILE
  mkdir -p "$(dirname "$file")"
  "${PYTHON:-python}" - "$CONFIG" "$section" "$file" "${@:3}" <<'PY' || exit 2
import json, sys
from ddro.errors import DDROError
from ddro.pipeline import load_preset
config, section, file, *keys = sys.argv[1:]
try:
    values = load_preset(config).get(section, {})
except DDROError as e:
    sys.exit(f"error: {e}")
if keys:
    values = {k: v for k, v in values.items() if k in keys}
with open(file, "w", encoding="utf-8") as f:
    json.dump(values, f, indent=2, sort_keys=True)
    f.write("\n")
PY
  echo "$file"
}

show() {  # show CMD...: print "+ CMD" on stdout, each argument shell-quoted where it needs it
  local arg line="+"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $arg"; else line+=" $(printf '%q' "$arg")"; fi
  done
  echo "$line"
}

launch() {  # launch CMD...: print the command; run it unless DRY_RUN=1
  show "$@"
  [[ ${DRY_RUN:-0} == 1 ]] || "$@"
}

entry() {  # entry MODULE [WORDS...]: sets ENTRY to torchrun over NPROC GPUs, else `ddro WORDS`
  local nproc=${NPROC:-1}  # (or `python -m MODULE` for a module without ddro words)
  [[ $nproc =~ ^[1-9][0-9]*$ ]] || usage "NPROC must be a positive integer, got '$nproc'"
  if (( nproc > 1 )); then
    ENTRY=(torchrun --standalone --nproc_per_node "$nproc" -m "$1")
  elif (( $# > 1 )); then
    ENTRY=(ddro "${@:2}")
  else
    ENTRY=("${PYTHON:-python}" -m "$1")
  fi
}

stage_done() {  # stage_done FOLDER MARKER: true when FOLDER/MARKER exists (the stage finished)
  [[ -f $1/$2 ]]
}

other_encoding() {  # sets OTHER: the encoding whose docids feed stage 1's "enhanced docid" input, or ""
  local default=""
  if [[ $DATASET != beir ]]; then
    case $ENCODING in pq) default=tu ;; tu) default=pq ;; esac  # the paper: PQ <-> TU
  fi
  OTHER=${OTHER_ENCODING-$default}
  if [[ -n $OTHER && ( " ${ENCODINGS[*]} " != *" $OTHER "* || $OTHER == "$ENCODING" ) ]]; then
    usage "OTHER_ENCODING must be another encoding than $ENCODING (or empty), got '$OTHER'"
  fi
}

negatives_setting() {  # sets NEG_SOURCE, NEG_MODEL / NEG_DENSE (1 when that source mines, else "") and
  # NEGATIVES, the negatives folder; the source and mix: NEGATIVES_SOURCE / NEGATIVES_MIX, else $CONFIG's
  local config
  config=$("${PYTHON:-python}" - "$CONFIG" <<'PY' || exit 2
import sys
from ddro.errors import DDROError
from ddro.pipeline import load_preset
try:
    section = load_preset(sys.argv[1]).get("negatives", {})
except DDROError as e:
    sys.exit(f"error: {e}")
print(section.get("source", "bm25"), section.get("mix") or "")
PY
  )
  NEG_SOURCE=${NEGATIVES_SOURCE:-${config%% *}}
  local mix=${NEGATIVES_MIX:-${config#* }} used
  case $NEG_SOURCE in
    bm25|model|dense) used=$NEG_SOURCE ;;
    mixed) used=$(tr ',' '\n' <<< "$mix" | cut -d: -f1 | tr '\n' ' ') ;;
    *) usage "NEGATIVES_SOURCE must be bm25, model, dense or mixed, got '$NEG_SOURCE'" ;;
  esac
  NEG_MODEL="" NEG_DENSE=""
  [[ " $used " == *" model "* ]] && NEG_MODEL=1
  [[ " $used " == *" dense "* ]] && NEG_DENSE=1
  NEGATIVES=$DATA/negatives
  if [[ -n $NEG_MODEL ]]; then NEGATIVES=$OUT/negatives; fi
}

merge_configs() {  # merge_configs FILE CONFIG...: the CONFIGs' keys (later ones win) as JSON in FILE; print FILE
  "${PYTHON:-python}" - "$@" <<'PY' || exit 2
import json, sys
file, *parts = sys.argv[1:]
merged = {}
for part in parts:
    with open(part, encoding="utf-8") as f:
        merged.update(json.load(f))
with open(file, "w", encoding="utf-8") as f:
    json.dump(merged, f, indent=2, sort_keys=True)
    f.write("\n")
PY
  echo "$1"
}

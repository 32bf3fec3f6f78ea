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

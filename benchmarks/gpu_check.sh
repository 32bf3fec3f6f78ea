#!/usr/bin/env bash
# One prepared command for a GPU machine (under 8 minutes on one H100/H200): prints one table of
# decoding queries/s, training steps/s and embedding docs/s at paper scale. Runs on CPU too
# (--size cpu, the default without CUDA; --size tiny in seconds). See benchmarks/README.md.
#   benchmarks/gpu_check.sh [--size gpu|cpu|tiny] [--json FILE] [--skip embed] [--threads N]
# PYTHON=... picks the interpreter (default: python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$root/benchmarks/gpu_check.py" "$@"

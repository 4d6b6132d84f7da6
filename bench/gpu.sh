#!/usr/bin/env bash
# One CUDA GPU, this repository, its .venv: the figures of bench/RESULTS.md's GPU table in <= 8 minutes.
#   bench/gpu.sh                 sd15-size at 512 px (float16, bfloat16, channels-last, compiled), sdxl-size at 1024 px
#   bench/gpu.sh --cpu-smoke     the same code on the CPU with tiny models (what CI runs)
#   bench/gpu.sh --out FILE      where the Markdown table goes (default bench/gpu_results.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" bench/gpu_table.py "$@"

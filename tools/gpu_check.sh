#!/usr/bin/env bash
# The prepared GPU check (tools/gpu_check.py): on a machine with NVIDIA's PyTorch and no internet, with the
# wheels made by `python tools/gpu_check.py --download-wheels tools/wheels --python-version X.Y` beside it.
# Writes gpu_check/gpu_check.json; sized to finish within 8 minutes on one H200.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python tools/gpu_check.py --wheels "${WHEELS:-tools/wheels}" --out "${OUT:-gpu_check}" "$@"

#!/usr/bin/env bash
# Create .venv with xmrbench and its test dependencies. Safe to run again.
# torch is pinned first: asking pip for any other torch spec before the pin can pull
# a multi-GB CUDA build; with 2.13.0 installed, the project's "torch>=2.1" is satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${XMRBENCH_TORCH:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"

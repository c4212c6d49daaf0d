#!/usr/bin/env bash
# Set up deqshield in ./.venv: a CPU build of torch 2.13.0 (only where the venv has no torch),
# then deqshield and its dependencies. `--dev` adds the test tools.
#
# torch is pinned to the "+cpu" build, which exists only as a CPU wheel (on the PyTorch CPU
# index, or in a local wheel folder configured for pip), so a CUDA build is never pulled by
# accident; the later install of deqshield finds torch already satisfied and leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing torch 2.13.0 (CPU build)"
    "${pip[@]}" install "torch==2.13.0+cpu" 2>/dev/null \
        || "${pip[@]}" install "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
fi
echo "setup: installing deqshield${extras}"
"${pip[@]}" install -e ".${extras}"
.venv/bin/python -c "import torch, deqshield; print(f'setup: torch {torch.__version__}, deqshield {deqshield.__version__}')"

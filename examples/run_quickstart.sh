#!/usr/bin/env bash
# One command on a fresh clone: make a virtual environment (or reuse it), install a CPU build of torch and this
# package with its compiled CPU kernels, and run examples/quickstart.py (arguments are passed on to it).
#
#   bash examples/run_quickstart.sh [quickstart options, e.g. --count 256]
#
# Time: the first run installs and compiles (a few minutes on 2 cores), then the quickstart runs (about 25 s
# on an idle 2-core CPU); later runs reuse the environment and start the quickstart at once.
# Environment (the same conventions as tests/run.sh):
#   VENV                 the virtual environment to make or reuse (default: .venv in the repository)
#   TORCH_SPEC           the torch requirement (default: torch==2.13.0)
#   TORCH_INDEX_URL      where the CPU build of torch is tried first (default: PyTorch's CPU wheel index; empty
#                        skips it); if that fails, TORCH_SPEC comes from pip's configured index (PIP_INDEX_URL,
#                        PIP_EXTRA_INDEX_URL), e.g. this project's mirror, which serves the CPU build
#   FAIR_CALIB_REINSTALL=1  reinstall the package (and recompile its kernels) even if the environment has it
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
py="$(cd "$VENV" && pwd -P)/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "== installing $TORCH_SPEC into $VENV"
  # the CPU build (about 200 MB) rather than the public index's CUDA build (several GB) where that index is
  # reachable; short timeout and no retries, so that a machine without it falls back at once
  if [ -z "$TORCH_INDEX_URL" ] || ! "${pip[@]}" --timeout 30 --retries 0 --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; then
    [ -z "$TORCH_INDEX_URL" ] || echo "== $TORCH_INDEX_URL did not serve $TORCH_SPEC; trying pip's configured index"
    "${pip[@]}" "$TORCH_SPEC"
  fi
fi
here=$(pwd -P)
# checked from / so that the checkout itself is not on the path: only an installed package counts
if [ "${FAIR_CALIB_REINSTALL:-0}" = 1 ] || ! (cd / && "$py" - "$here" <<'PY' 2>/dev/null
import os, sys
import fair_calib_hf
# installed from this checkout (editable), not some other copy
sys.exit(0 if os.path.realpath(fair_calib_hf.__file__).startswith(os.path.join(sys.argv[1], "")) else 1)
PY
); then
  echo "== installing fair_calib_hf from $here into $VENV (compiles the CPU kernels: a few minutes)"
  "${pip[@]}" "setuptools>=68" wheel
  # no build isolation: the native extension compiles against the torch installed above
  "${pip[@]}" --no-build-isolation -e .
fi
echo "== $("$py" -c 'import torch, transformers, fair_calib_hf.ops as o; print("torch", torch.__version__, "| transformers", transformers.__version__, "| CPU backend", o.active_backend("cpu"))')"
exec "$py" examples/quickstart.py "$@"

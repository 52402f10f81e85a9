#!/usr/bin/env bash
# Install the package (with its compiled CPU kernels) and its test extras into two virtual environments,
# one per supported transformers line (5.x, and 4.57 which the real LLaDA/Dream remote code needs), and run
# the test suite in each. TORCH_SPEC overrides the torch requirement (default torch==2.13.0: the CPU build on
# this project's package mirror; from the public index that pin is the CUDA build, see the README).
# FAIR_CALIB_REQUIRE_EXT=1 makes the kernel tests fail (not skip) if the native extension did not build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export FAIR_CALIB_REQUIRE_EXT=${FAIR_CALIB_REQUIRE_EXT:-1}
for line in "tf5 transformers>=5.24,<6" "tf457 transformers>=4.57,<4.58"; do
  name=${line%% *}
  spec=${line#* }
  venv=.venv-$name
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  "${pip[@]}" "$TORCH_SPEC" "setuptools>=68" wheel
  # no build isolation: the native extension compiles against the torch installed above
  "${pip[@]}" --no-build-isolation -e ".[test]" "$spec"
  echo "== tests with $("$venv/bin/python" -c 'import transformers, fair_calib_hf.ops as o; print("transformers", transformers.__version__, "| CPU backend", o.active_backend("cpu"))')"
  "$venv/bin/python" -m pytest -q -rs tests "$@"
done

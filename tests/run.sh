#!/usr/bin/env bash
# Install the package with its test extras into two virtual environments, one per supported transformers
# line (5.x and 4.57, the line the real LLaDA/Dream remote code needs), and run the test suite in each.
# TORCH_SPEC overrides the torch requirement (default: the small CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
for line in "tf5 transformers>=5.24,<6" "tf457 transformers>=4.57,<4.58"; do
  name=${line%% *}
  spec=${line#* }
  venv=.venv-$name
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$TORCH_SPEC"
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]" "$spec"
  echo "== tests with $("$venv/bin/python" -c 'import transformers; print("transformers", transformers.__version__)')"
  "$venv/bin/python" -m pytest -q tests "$@"
done

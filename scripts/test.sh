#!/usr/bin/env bash
# Installs the project with its test dependencies (Debian packages included) and runs
# the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
status=0
.venv/bin/python -m pytest "$@" || status=$?
# pytest exits 5 when it collected no tests: for this project that is a failure too.
if [[ $status == 5 ]]; then echo "no tests were collected" >&2; exit 1; fi
exit $status

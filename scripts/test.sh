#!/usr/bin/env bash
# Set up everything the tests need (including the offline MiniLM) and run lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh serve,eval,text,train,distributed,test
.venv/bin/ruff check .
.venv/bin/python -m pytest --durations=15 "$@"

#!/usr/bin/env bash
# Set up everything the tests need (including the offline MiniLM), then lint, the import
# contract, the type check and the test suite (with its 15 slowest tests reported).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh serve,eval,text,train,distributed,test
.venv/bin/ruff check .          # style, complexity <= 15, no private-name imports
.venv/bin/lint-imports          # the house plan: each stage imports only the stages below it
.venv/bin/mypy                  # strict, on ebr/, service/ and index_build/
.venv/bin/python scripts/public_any.py  # no Any in a public signature
.venv/bin/python -m pytest --durations=15 "$@"

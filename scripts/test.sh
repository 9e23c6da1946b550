#!/usr/bin/env bash
# Set up everything the tests need (including the offline MiniLM, and Debian's chromium for
# the browser tests), then lint, the import contract, the type check and the test suite (with
# its 15 slowest tests reported).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh serve,eval,text,train,distributed,client,test
# the browser tests (tests/test_ui.py) drive Debian's chromium: install it where missing
if [ ! -x "${EBR_CHROMIUM:-/usr/bin/chromium}" ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export EBR_REQUIRE_BROWSER="${EBR_REQUIRE_BROWSER:-1}"  # a missing browser fails, never skips
.venv/bin/ruff check .          # style, complexity <= 15, no private-name imports
.venv/bin/lint-imports          # the house plan: each stage imports only the stages below it
.venv/bin/mypy                  # strict, on ebr/, service/ and index_build/
.venv/bin/python scripts/public_any.py  # no Any in a public signature
.venv/bin/python -m pytest --durations=15 "$@"

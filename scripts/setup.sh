#!/usr/bin/env bash
# Create .venv (if missing) and install ebr with the given extras, e.g. scripts/setup.sh serve,eval
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve,eval}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch is pinned to 2.13.0 (the CPU wheel); install it first so nothing pulls a CUDA build.
case ",$extras," in
  *,text,*|*,train,*) .venv/bin/python -m pip install -q "torch==2.13.0" ;;
esac
.venv/bin/python -m pip install -q -e ".[${extras}]"

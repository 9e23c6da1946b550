#!/usr/bin/env bash
# The main job on the built-in data: set up, generate a seeded synthetic corpus, build the index,
# evaluate it (recall, nDCG, latency, next to faiss IVFPQ+RefineFlat), then serve it on
# http://127.0.0.1:8000 until Ctrl-C. EBR_DEMO_SERVE=0 stops after the evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh serve,eval
.venv/bin/index_build demo --workdir runs/demo "$@"
if [ "${EBR_DEMO_SERVE:-1}" != "0" ]; then
  echo "serving runs/demo/index on http://127.0.0.1:${EBR_PORT:-8000} (docs at /docs; Ctrl-C stops)"
  exec .venv/bin/python -m service --index runs/demo/index
fi

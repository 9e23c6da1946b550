#!/usr/bin/env bash
# Build the service image, run it on a demo index, wait for /readyz, check that /search answers
# the same ids as the in-process searcher, and stop it.
#
#   docker/smoke.sh                 # podman through ../shared/tools/podman-here.sh where it
#                                   # exists (base localhost/debian:bookworm), else docker
#   EBR_IMAGE_BASE=python:3.11-slim EBR_ENGINE=docker docker/smoke.sh
#
# Needs .venv with the 'serve' and 'client' extras (scripts/setup.sh serve,client) for the demo
# index and the comparison. Prints the image size.
set -euo pipefail
cd "$(dirname "$0")/.."
here=../shared/tools/podman-here.sh
if [ "${EBR_ENGINE:-}" = docker ] || { [ -z "${EBR_ENGINE:-}" ] && [ ! -x "$here" ]; }; then
  build=(docker build) run=(docker run) engine=docker
  base="${EBR_IMAGE_BASE:-python:3.11-slim}"
else
  build=("$here" build) run=("$here" run) engine=podman
  base="${EBR_IMAGE_BASE:-localhost/debian:bookworm}"
fi
tag="${EBR_IMAGE_TAG:-localhost/ebr:smoke}"
work=runs/smoke
port="${EBR_SMOKE_PORT:-8799}"
name="ebr-smoke-$$"

echo "== demo index ($work/index)"
.venv/bin/python - "$work" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from ebr.data.synthetic import SyntheticConfig, generate
from ebr.index.writer import write_index
from ebr.spec import BuildParams, IndexSpec

work = Path(sys.argv[1])
ds = generate(SyntheticConfig(n=20_000, d=64, nq=50, seed=7))
write_index(work / "index", ds.xb, BuildParams(spec=IndexSpec.parse("IVF128,PQ16")),
            [f"doc-{i}" for i in range(len(ds.xb))],
            payloads=[(f"doc-{i}", {"n": i}) for i in range(len(ds.xb))], overwrite=True)
np.save(work / "queries.npy", ds.xq)
EOF

echo "== build $tag from $base ($engine)"
t0=$(date +%s)
"${build[@]}" -f docker/Dockerfile --build-arg BASE="$base" -t "$tag" . >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
size=$($engine image inspect "$tag" --format '{{.Size}}')
echo "image size: $size bytes ($(( size / 1000000 )) MB)"

echo "== run"
cleanup() { $engine rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
chmod -R a+rX "$work/index"
"${run[@]}" -d --name "$name" --network host -e EBR_PORT="$port" -e EBR_WORKERS=1 \
  -v "$PWD/$work/index:/index:ro" --tmpfs /tmp "$tag" >/dev/null
url="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  if .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$url/readyz').status_code != 200)" \
      2>/dev/null; then
    ready=1; break
  fi
  sleep 0.5
done
if [ -z "${ready:-}" ]; then
  echo "not ready after 60 s:"; $engine logs "$name" | tail -30; exit 1
fi
echo "ready: $(.venv/bin/python -c "import httpx; print(httpx.get('$url/readyz').json())")"

echo "== /search against the in-process searcher"
.venv/bin/python - "$work" "$url" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from ebr.client import Client
from ebr.index.reader import open_index
from ebr.search.searcher import Searcher
from ebr.spec import SearchParams

work, url = Path(sys.argv[1]), sys.argv[2]
searcher = Searcher(open_index(work / "index"))
xq = np.load(work / "queries.npy")
same = 0
with Client(url) as c:
    info = c.index_info()
    for q in xq:
        got = c.search(q, k=10, nprobe=16, candidates=100, with_payload=True)
        ref, _ = searcher.search(q, SearchParams(k=10, nprobe=16, candidates=100))
        want = searcher.external_ids(ref.ids[0])
        if got.ids != want:
            sys.exit(f"differs: {got.ids} != {want}")
        if any(h.payload != {"n": int(str(h.id)[4:])} for h in got.hits):
            sys.exit("payloads differ")
        same += 1
print(f"{same}/{len(xq)} queries: the container's ids equal the in-process searcher's "
      f"(index {info.spec}, {info.count} documents, version {info.index_version})")
EOF
echo "== stop"
$engine stop -t 10 "$name" >/dev/null
echo "smoke test passed"

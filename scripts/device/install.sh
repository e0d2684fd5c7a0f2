#!/usr/bin/env bash
# Run THERE (the GPU box), after every part was copied to /tmp/pkg by earlier `run` calls:
# reassemble, verify, install vLLM into /tmp/site. Then: export PYTHONPATH=/tmp/site.
set -euo pipefail
SHA=${1:-.devpkg/parts/SHA256}
cat /tmp/pkg/part_* > /tmp/bundle.tar
echo "$(cat "$SHA")  /tmp/bundle.tar" | sha256sum -c -
mkdir -p /tmp/unpack && tar -xf /tmp/bundle.tar -C /tmp/unpack
# one build per distribution: pip refuses two wheels of one package (bundles made before fetch.sh's fix)
python3 - <<'PY'
import os, glob
seen = set()
for f in sorted(glob.glob("/tmp/unpack/wheels/*.whl")):
    name = os.path.basename(f).split("-")[0].lower()
    if name in seen:
        os.remove(f)
    seen.add(name)
PY
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/unpack/wheels/*.whl
echo "installed: $(PYTHONPATH=/tmp/site python3 -c 'import vllm; print(vllm.__version__)')"

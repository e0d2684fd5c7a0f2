#!/usr/bin/env bash
# Run HERE (a machine with PyPI): download vLLM 0.26.0 and the cp312 wheels the GPU box lacks, pack them
# into one tar and split it into parts that fit one `run` call each (64 MiB per call, working tree included).
# Output: .devpkg/parts/part_NN and .devpkg/parts/SHA256 (ignored by git; carried explicitly).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DEPS=${DEPS:-../shared/gpu/vllm-0.26.0-device-deps.txt}
W=.devpkg/wheels
rm -rf "$W" && mkdir -p "$W" .devpkg/parts  # fresh: a re-run must not leave two builds of one wheel
plat=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for n in $(seq 5 39); do plat+=(--platform "manylinux_2_${n}_x86_64"); done
pipdl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --abi cp312 --abi abi3 --abi none "${plat[@]}" -d "$W" "$@"; }
pipdl vllm==0.26.0
grep -v '^\s*#' "$DEPS" | grep -v '^\s*$' | while read -r req; do pipdl "$req"; done
# what sloguard's own optimizers need there beyond vLLM's dependencies (the box has numpy, scipy, sklearn),
# and the client of `vllm bench serve` (benchmarks/client_agreement.py)
for req in optuna alembic sqlalchemy colorlog mako greenlet aiohttp aiohappyeyeballs aiosignal frozenlist multidict \
           yarl propcache attrs; do pipdl "$req"; done
# WITH_RAY=1: Ray for `sloguard tune --workers` (~70 MB more: one or two more parts)
if [ "${WITH_RAY:-0}" = 1 ]; then
  for req in ray click jsonschema jsonschema-specifications referencing rpds-py msgpack; do pipdl "$req"; done
fi
rm -f .devpkg/parts/part_*
tar -cf .devpkg/bundle.tar -C .devpkg wheels
split -b 48000000 -d -a 2 .devpkg/bundle.tar .devpkg/parts/part_
sha256sum .devpkg/bundle.tar | cut -d' ' -f1 > .devpkg/parts/SHA256
rm .devpkg/bundle.tar
ls -la .devpkg/parts

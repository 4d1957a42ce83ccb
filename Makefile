# rewardlab: two commands on a fresh machine.
#   make demo   create .venv, install torch (CPU wheel) then rewardlab, run the default pipeline
#   make test   same install, then the test suite
#   make bench  rewardlab vs TRL throughput, side by side (benchmarks/RESULTS.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so that nothing later pulls a CUDA build; a torch already in the venv is kept.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/rewardlab run configs/default.yaml

test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

# rewardlab against TRL 1.16 side by side (benchmarks/bench_trl.py): make bench [BENCH_ARGS=--quick]
BENCH_ARGS ?=
bench: install
	$(PIP) install -q -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_trl.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

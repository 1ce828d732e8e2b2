# Two commands do all set-up on a fresh clone (the environment is created on first use):
#   make demo   - the main job on the built-in toy model
#   make test   - the test suite CI runs (tests marked slow left out; make test-all runs every test)
# The first interpreter torch 2.13 and Ray 2.60 support (3.10-3.12), else python3.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.10 python3; do command -v $$p >/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.trce-installed
DEMO_OUT ?= demo-output

# torch is installed first, pinned, so pip never pulls a CUDA build on a CPU box (and does on a GPU box).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: setup demo demo-flux test test-all lint
setup: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/trce-ray toy demo --output $(DEMO_OUT) --overwrite

# the same main job on the FLUX toy (flow-matching transformer, T5 + pooled CLIP)
demo-flux: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/trce-ray toy demo --family flux --output $(DEMO_OUT)-flux --overwrite

test: $(STAMP)
	$(BIN)/ruff check trce_ray jobs tests bench tools
	$(BIN)/ruff format --check trce_ray jobs tests bench tools
	OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q

test-all: $(STAMP)
	OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check trce_ray jobs tests bench tools
	$(BIN)/ruff format --check trce_ray jobs tests bench tools

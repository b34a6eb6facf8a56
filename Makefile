# medexp: `make train` and `make test` set everything up themselves (a .venv beside this file).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch with a matching torchvision (MONAI's detection stack needs it); override for another platform/CUDA
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# where torch comes from: empty = pip's default (Linux: the CUDA build, ~3.2 GB of nvidia-* libraries beside it);
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU-only build, .../whl/cu126 etc. for a given CUDA
TORCH_INDEX ?=
ARGS ?=
# make compare: every experiment unless EXP names one
EXP ?=
BENCH_NPZ ?= ../shared/data/pneumoniamnist.npz
# the MLflow UI/server's bind address: its own name, not HOST (tcsh and some containers export HOST=0.0.0.0)
MLFLOW_PORT ?= 5000
MLFLOW_HOST ?= 127.0.0.1
# runs started by make (make train MLFLOW_PORT=5001) print UI links to the same address
export MLFLOW_PORT MLFLOW_HOST
# MLflow's server imports a starlette module starlette deprecates, once per worker: nothing a user can act on
QUIET_UI := PYTHONWARNINGS="ignore:starlette.middleware.wsgi is deprecated"
# MEDEXP_OUTPUT_ROOT moves all outputs (as it does for medexp-train), the UI and server follow it
OUTPUTS := $(or $(MEDEXP_OUTPUT_ROOT),$(CURDIR)/outputs)
# the tracking server's store (make server DB=postgresql://user:pw@host/db for a team); artifacts go through it
DB ?= sqlite:///$(OUTPUTS)/mlflow.db

.PHONY: install train test test-fast lint format ui server compare bench clean cluster-up cluster-down

# what running needs (make train, ui, compare, ...): torch and medexp with its runtime dependencies
$(BIN)/medexp-train: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_SPEC)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $@

# the developer extras on top (pytest, ruff, Slurm launcher, PostgreSQL driver, ONNX export)
$(VENV)/.dev-installed: $(BIN)/medexp-train
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.dev-installed  ## create .venv and install medexp (editable) with its test/dev tools

train: $(BIN)/medexp-train  ## train the default experiment (synthetic lesions, offline); pass overrides with ARGS="..."
	$(BIN)/medexp-train $(ARGS)

test: install  ## the whole test suite (slow-marked end-to-end tests included)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: install  ## the suite without the slow-marked tests
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks

ui: $(BIN)/medexp-train  ## MLflow UI over outputs/ on http://$(MLFLOW_HOST):$(MLFLOW_PORT) (loopback only by default)
	mkdir -p $(OUTPUTS) && echo http://$(MLFLOW_HOST):$(MLFLOW_PORT) > $(OUTPUTS)/mlflow-ui.url  # runs started outside make link here
	$(QUIET_UI) $(BIN)/mlflow ui --backend-store-uri sqlite:///$(OUTPUTS)/mlflow.db --host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

server: $(BIN)/medexp-train  ## a tracking server runs can log to: MLFLOW_TRACKING_URI=http://$(MLFLOW_HOST):$(MLFLOW_PORT) [DB=postgresql://...]
	mkdir -p $(OUTPUTS)
	$(QUIET_UI) $(BIN)/mlflow server --backend-store-uri '$(DB)' --serve-artifacts \
		--artifacts-destination $(OUTPUTS)/mlartifacts --host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

compare: $(BIN)/medexp-train  ## runs ranked by best validation value: make compare [EXP=<experiment>] [SWEEP=<parent run id | sweep name>]
	$(BIN)/medexp-compare $(EXP) $(if $(SWEEP),--sweep $(SWEEP))

bench: $(BIN)/medexp-train  ## whole-command speed: medexp-train against a plain PyTorch loop (cnn x30, resnet18_small x5)
	$(BIN)/python benchmarks/bench_train.py --npz $(BENCH_NPZ) $(ARGS)

cluster-up:  ## local one-node Slurm + PostgreSQL for sweeps (root; installs what is missing) -> outputs/cluster.env
	OUTPUTS=$(OUTPUTS) scripts/cluster/up.sh

cluster-down:  ## stop the local Slurm and PostgreSQL that cluster-up started
	scripts/cluster/down.sh

clean:
	rm -rf outputs .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

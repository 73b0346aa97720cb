# DepthID developer commands. `make serve` and `make test` work on a fresh machine: each one
# creates .venv and installs what it needs first.

PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 3000
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip call as everything else: on these machines torch==2.13.0 is
# the CPU build on disk, where an unpinned resolve would pull a multi-GB CUDA build.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

# Tests start their own redis-server on 127.0.0.1; install it when the machine lacks it.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install serve test lint format models redis-server pull bench-latency clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) "torch==2.13.0" -e ".[test]"
	# insightface without its declared deps: see the note in pyproject.toml.
	$(PIP_INSTALL) --no-deps "insightface==2.1"
	touch $@

install: $(VENV)/.installed

models: install
	$(BIN)/python -m models.build

serve: models
	BENTOML_DO_NOT_TRACK=true DEPTHID_PROFILE=tiny DEPTHID_DEVICE=cpu $(BIN)/bentoml serve service:Gateway --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

redis-server:
	@command -v redis-server >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server)

test: lint models redis-server
	$(BIN)/python -m pytest

bench-latency: models
	$(BIN)/python -m benchmarks.latency

pull: install
	DEPTHID_PROFILE=full $(BIN)/python -m models.pull --profile full

clean:
	rm -rf $(VENV) .models .pytest_cache .ruff_cache

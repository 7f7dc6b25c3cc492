# Set-up is part of every target: a fresh machine needs only python3 (>= 3.10) and make.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-fast lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,openvino]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autoprune search search_spaces/demo.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check autoprune tests benchmarks docs
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/python -m pytest -m "not heavy"

test-all: lint
	$(VENV)/bin/python -m pytest -m "slow or not slow"

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) studies/*.db studies/*/

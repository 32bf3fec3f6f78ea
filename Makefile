# Two entry points: `make demo` and `make test` (lint, then the suite). Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
COLLECTION ?= scifact
OUT ?= resources/demo/$(notdir $(COLLECTION))
PRESET ?= tiny
PYTEST_ARGS ?=

.PHONY: install demo lint test clean

install: $(VENV)/.installed

# torch first, pinned: otherwise pip resolves a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: install
	$(VENV)/bin/ddro pipeline --collection $(COLLECTION) --output $(OUT) --preset $(PRESET)
	$(VENV)/bin/ddro report $(OUT)  # prints the path of report.md

# ruff is pinned in requirements.txt; its configuration is in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info

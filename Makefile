# samrep: `make report` (default HW=cpu) and `make test` do all the set-up on a fresh machine.
HW ?= cpu
VENV ?= .venv
PY ?= $(VENV)/bin/python
# The CPU wheel that lies on the reference machine's disk. On a GPU machine use the CUDA build
# that matches its driver, e.g. `make report HW=h200 TORCH_SPEC='torch==2.11.0'`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Tests pass SETUP= to run with an already prepared interpreter (PY=...).
SETUP ?= $(STAMP)
FORCE ?=

.PHONY: setup report test lint browser clean-reports help

help:
	@echo "make report [HW=cpu|auto|tiny|a100|h200] [FORCE=1]  set up, run the report -> reports/<HW>/index.html (auto: this GPU by its NVML name, else cpu)"
	@echo "make test                                       set up, lint, run the tests"
	@echo "make setup                                      only create $(VENV) and install"

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q '$(TORCH_SPEC)'
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)

report: $(SETUP)
	$(PY) -m samrep report --hw $(HW) $(if $(FORCE),--force)

lint: $(SETUP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(dir $(PY))lint-imports

# The report's browser test drives the system's Chromium (tests/browser.py); without one it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$SAMREP_CHROMIUM" ] \
	  || apt-get install -y chromium >/dev/null 2>&1 \
	  || { apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1; } \
	  || echo "warning: chromium not installed (apt-get install chromium); the browser test will skip" >&2

test: lint browser
	$(PY) -m pytest -q

# The README's commands. Everything installs into .venv from python3 alone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench up clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fleet needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleet demo

up: $(STAMP)
	$(BIN)/fleet up --embedded

lint: $(STAMP)
	$(BIN)/ruff check shared workers tests bench infra
	$(BIN)/ruff format --check shared workers tests bench infra

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects nothing (e.g. a -k that matches no test): not a failure of the code.
unit: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/consumer.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

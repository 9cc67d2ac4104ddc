# The two commands a newcomer needs: `make up` (a local cluster with kopflet running in it)
# and `make test` (everything CI runs). Both install what they need first.
PYTHON ?= python3
NODES ?= 3
PYTEST_ARGS ?=

.PHONY: deps up down status test lint unit integration kind-up kind-down

deps:
	scripts/install-deps

up: deps
	kopflet up --nodes $(NODES)

down:
	kopflet down

status:
	kopflet status

lint: deps
	ruff check .
	mypy

unit: deps
	$(PYTHON) -m pytest -m unit $(PYTEST_ARGS)

integration: deps
	$(PYTHON) -m pytest -m integration $(PYTEST_ARGS)

test: lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The quick start on kind (README): a kind cluster, the image, the manifests, the web example.
kind-up:
	scripts/kind-up

kind-down:
	scripts/kind-down

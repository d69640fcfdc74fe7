# Two entry points for a newcomer on a fresh machine (Debian/Ubuntu, Python >= 3.10):
#   make demo   # environment + Fashion-MNIST + MAE pretraining + reconstruction PNG + kNN scores
#   make test   # environment + Fashion-MNIST + chromium + the docs built strictly + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; set TORCH_SPEC=torch to take the default (CUDA) build on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= runs/demo

.PHONY: env data browser demo test docs bench clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,tensorboard,eval,docs,field]"
	touch $@

# the test suite's extras on top: the peers of the export round trips (transformers, onnxruntime), the
# experiment trackers (MLflow, W&B offline), the explorer's server and Optuna for the sweeps
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[interop,mlflow,wandb,explore,sweep]"
	touch $@

data:
	@[ -f $(FMNIST)/t10k-labels-idx1-ubyte.gz ] || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

# the browser of the explorer's end-to-end test (tests/explore): Debian's chromium and its driver
browser:
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }

demo: env data
	$(VENV)/bin/mimkit pretrain --config configs/mae_fashion_mnist_demo.yaml output_dir=$(DEMO_DIR)
	$(VENV)/bin/mimkit reconstruct $(DEMO_DIR) --out $(DEMO_DIR)/reconstruction.png
	$(VENV)/bin/mimkit knn $(DEMO_DIR) --compare-random --train-limit 5000 --test-limit 1000

test: env $(VENV)/.installed-test data browser docs
	$(PY) -m pytest -q

# the documentation site, built strictly: a broken link, anchor or API reference is an error
# (NO_MKDOCS_2_WARNING=1 silences the banner Material for MkDocs prints at every build: its end of life is
# 2027-05-05, and its successor, Zensical, reads this mkdocs.yml)
docs: env
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir build/site

bench: env data
	$(PY) -m pip install -q "transformers>=4.40"
	$(PY) benchmarks/mae_throughput.py

clean:
	rm -rf $(VENV) runs

# make demo: set up .venv (first time only) and run the demo job on the embedded tiny models.
# make test: set up .venv (first time only) and run the whole test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned as a pair: a torch without its matching torchvision breaks open_clip.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m pipeline run jobs/demo.toml
	$(PY) -m pipeline verify out/demo
	$(PY) -m pipeline report out/demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/pipeline_vs_bare.py --quick

clean:
	rm -rf out .pytest_cache

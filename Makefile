# make demo: set up .venv (first time only) and run the demo job on the embedded tiny models.
# make test: set up .venv (first time only) and run the whole test suite.
# make docs-pictures: rerun the job behind the README's format strip and redraw docs/format-strip.png.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned as a pair: a torch without its matching torchvision breaks open_clip.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-fast lint bench bench-watermark bench-verify bench-gpu-check gpu-wheels clean interop-missing docs-pictures

# The C2PA interoperability tests (tests/test_interop.py) validate images with an independent
# implementation on Node.js: installed from the lockfile, no install scripts, nothing native.
NPM := $(shell command -v npm 2>/dev/null)
INTEROP := tests/interop/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(INTEROP): tests/interop/package.json tests/interop/package-lock.json
	cd tests/interop && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

interop-missing:
	@echo "setup: npm not found: the C2PA interoperability tests (tests/test_interop.py) will be skipped" >&2

setup: $(VENV)/.installed $(if $(NPM),$(INTEROP),interop-missing)

demo: setup
	$(PY) -m pipeline run jobs/demo.toml
	$(PY) -m pipeline verify out/demo
	$(PY) -m pipeline report out/demo

# The README's format strip: a real run (docs/format-strip.toml: the demo job at 256x256 with four
# channel formats, one staged row, in-process), then the strip drawn from its results. A rerun
# resumes (nothing left to make) and redraws; `make clean` first to generate anew.
docs-pictures: setup
	$(PY) -m pipeline run docs/format-strip.toml --in-process --rows stage-mug-01
	$(PY) -m docs.format_strip out/format-strip docs/format-strip.png --id stage-mug-01

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/pipeline_vs_bare.py --quick

# The watermark's robustness and PSNR cost on natural photos (bench/RESULTS.md, "Watermark").
bench-watermark: setup
	$(PY) -m bench.watermark --size 512

# What verify costs per image, at 1, 2 and 4 threads (bench/RESULTS.md, "verify").
bench-verify: setup
	$(PY) -m bench.verify --images 400 --size 512

# bench/gpu.sh's steps end to end on this CPU with tiny models (before the one GPU call: bench/RESULTS.md).
bench-gpu-check: setup
	PY=$(PY) bash bench/gpu.sh --cpu-check

# The packages the GPU machine lacks, as .whl/site.tar.xz (carried by the device call).
gpu-wheels: setup
	PY=$(PY) bash bench/gpu_wheels.sh

clean:
	rm -rf out .pytest_cache

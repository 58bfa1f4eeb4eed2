# autoglm-export: make install | make test | make android
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU torch wheel lives on disk on these machines; elsewhere pip uses PyPI's CPU index pin.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := $(VENV)/.installed

.PHONY: install lint test android parity calibrate qat android-calibrated quant-quality demo-test demo-traces peer-venv help

help:
	@echo "make install  - create .venv with pinned dependencies (torch==2.13.0 CPU)"
	@echo "make lint     - ruff lint + format check (config in pyproject.toml)"
	@echo "make test     - install if needed, lint, run the test suite"
	@echo "make android  - install if needed, export the embedded tiny model to dist/android"
	@echo "make parity   - export the tiny model to every target and write parity-report.md/.html"
	@echo "make calibrate - GPTQ-calibrate the tiny model on calibration_data/ -> dist/quantized"
	@echo "make qat      - quantization-aware training of the tiny model -> dist/qat"
	@echo "make android-calibrated - export dist/quantized to dist/android-calibrated"
	@echo "make demo-test - export the tiny model, golden traces, javac + JUnit of android_demo's engine, parse + name-check both apps"
	@echo "make demo-traces - only the bundles and golden traces in build/demo (for swift test on a Mac)"
	@echo "make quant-quality - fp32 / RTN / GPTQ / QAT quality table (bench/quant_quality.py) into BENCHMARKS.md"
	@echo "make peer-venv - the optimum-executorch peer's own venv (PEER_VENV, default /work/venv-peer) for bench/android_peer.py"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 required)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, exactly pinned, so no other requirement can pull a CUDA build.
	$(PIP) install --quiet $(FIND_LINKS) torch==2.13.0
	$(PIP) install --quiet $(FIND_LINKS) -e ".[dev,targets,serve,demo]"
	$(PY) -c "import torch, numpy; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('installed torch', torch.__version__, 'numpy', numpy.__version__)"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers, whole files each (module fixtures build once): most tests are one-threaded export work.
TEST_WORKERS ?= 2
test: lint
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile tests

android: $(STAMP)
	$(VENV)/bin/autoglm-export android --force

# Every target's bundle of the embedded model, then one combined report; fails on any breach.
parity: $(STAMP)
	$(VENV)/bin/autoglm-export android --force --out dist/android
	$(VENV)/bin/autoglm-export onnx --force --out dist/onnx
	$(VENV)/bin/autoglm-export ios --force --out dist/ios
	$(VENV)/bin/autoglm-export parity-report dist/android dist/onnx dist/ios --out parity-report.md

calibrate: $(STAMP)
	$(VENV)/bin/autoglm-export calibrate --force --out dist/quantized

qat: $(STAMP)
	$(VENV)/bin/autoglm-export qat --force --out dist/qat

android-calibrated: calibrate
	$(VENV)/bin/autoglm-export android --force --quantized-checkpoint dist/quantized --out dist/android-calibrated

quant-quality: $(STAMP)
	$(PY) bench/quant_quality.py --markdown

# android_demo/ and ios_demo/: what Linux can build and check (tests/demo/demo_test.sh says what).
demo-test: $(STAMP)
	PY=$(PY) bash tests/demo/demo_test.sh

demo-traces: $(STAMP)
	PY=$(PY) bash tests/demo/demo_test.sh --traces-only

# The optimum-executorch peer pins its own transformers: its own venv, for bench/android_peer.py (not CI).
PEER_VENV ?= /work/venv-peer
peer-venv:
	PYTHON=$(PYTHON) bash bench/peer/make_venv.sh $(PEER_VENV)

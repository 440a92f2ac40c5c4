# sddpm-loihi: environment, tests, demo, benchmarks.
#   make venv    create/refresh .venv from the pinned requirements (idempotent, stamp-based)
#   make test    build the docs (strict) and run the test suite (what CI runs, through .ci/run)
#   make docs    write docs/cli.md from the parser and build the site of docs/ into out/site
#   make demo    sample, compile, verify and count the shipped MNIST SDDPM -> out/demo/grid.png, out/demo/report.md
#   make bench   run every script in benchmarks/
#   make quality run the quality rows (docs/quality.md) still without a result (sddpm quality; hours on a CPU)
#   make retrain-NAME  rebuild checkpoints/NAME.pt from scratch (resuming runs/NAME), e.g. retrain-fashion-sddpm
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp
FASHION_MNIST := /usr/share/datasets/fashion-mnist

# pip prints "WARNING: Location 'file:///opt/pypi-more/simple/<pkg>/' is ignored: it is neither a file
# nor a directory." once per package not mirrored in the second local index: harmless, filtered out.
# Only that line is dropped; errors pass through and pipefail keeps pip's exit status.
PIP_QUIET := sed -u -e "/^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$$/d"
PIP := $(VPY) -m pip install --progress-bar off

.PHONY: help venv test docs demo bench quality

help:
	@sed -n 's/^#   make /make /p' Makefile

venv: $(STAMP) $(FASHION_MNIST)

# The pinned requirement files are the tested set inside the ranges pyproject.toml declares (tests/test_packaging.py).
# lava-nc/lava-dl declare Python < 3.11: requirements/nodeps.txt goes in with --no-deps
# --ignore-requires-python, then deploy/lava_install.py fixes lava-nc's one Python 3.11 bug. The test-only
# libraries of requirements/interop.txt (snnTorch, Norse, Sinabs, NeuroBench, NVML) go in with --no-deps.
$(STAMP): requirements/base.txt requirements/nodeps.txt requirements/interop.txt pyproject.toml deploy/lava_install.py
	@if [ ! -x $(VPY) ]; then \
	  command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 1; }; \
	  echo "creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	@echo "== pip install -r requirements/base.txt"
	@$(PIP) -r requirements/base.txt 2>&1 | $(PIP_QUIET)
	@echo "== pip install --no-deps --ignore-requires-python -r requirements/nodeps.txt"
	@$(PIP) --no-deps --ignore-requires-python -r requirements/nodeps.txt 2>&1 | $(PIP_QUIET)
	@echo "== pip install --no-deps -r requirements/interop.txt"
	@$(PIP) --no-deps -r requirements/interop.txt 2>&1 | $(PIP_QUIET)
	@echo "== pip install --no-deps -e ."
	@$(PIP) --no-deps -e . 2>&1 | $(PIP_QUIET)
	@echo "== python -m deploy.lava_install (the patch)"
	@$(VPY) -m deploy.lava_install
	@touch $@

# Fashion-MNIST comes from Debian (docs/sources.md section 4.2); checked on every `make venv`.
$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist -> $@"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 dataset-fashion-mnist; \
	else \
	  echo "NOTE: $@ is missing and we are not root: Fashion-MNIST will be unavailable."; \
	  echo "      Install it with: sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"; \
	fi

test: venv
	$(VENV)/bin/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	$(VPY) -m pytest -q

# docs/cli.md from the parser, then the site (out/site) with warnings as errors
docs: venv
	$(VPY) -m toolchain.cli_reference docs/cli.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

demo: venv
	$(VENV)/bin/sddpm demo

bench: venv
	@shopt -s nullglob; scripts=(benchmarks/*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmark scripts in benchmarks/"; exit 0; fi; \
	for s in "$${scripts[@]}"; do echo "== $$s"; $(VPY) "$$s"; done

quality: venv
	$(VENV)/bin/sddpm quality

# The shipped checkpoints and the budgets that made them: one batch-32 Adam run each, EMA weights
# released. `sddpm train` resumes runs/NAME after a kill, so rerunning the target goes on.
TRAIN_COMMON := --preset mnist-small --batch-size 32 --lr 5e-4 --warmup 200 --ema-decay 0.998
# The demo model: 40,000 steps (issue 15; trained over several sessions, resuming after each kill).
TRAIN_mnist-sddpm := --dataset mnist --steps 40000
TRAIN_mnist-sddpm-step13000 := --dataset mnist --steps 13000
TRAIN_mnist-ann := --dataset mnist --kind ann --steps 13000
TRAIN_fashion-sddpm := --dataset fashion-mnist --steps 13000
TRAIN_fashion-ann := --dataset fashion-mnist --kind ann --steps 13000
TRAIN_mnist-sddpm-t4-step2000 := --dataset mnist --steps 2000
TRAIN_mnist-sddpm-t8-step2000 := --dataset mnist --snn-steps 8 --steps 2000
# The leaky neuron (LIF, tau 2) on the step-13,000 recipe of the IF model above (issue 31).
TRAIN_mnist-sddpm-lif := --dataset mnist --neuron lif --steps 13000
# The yardstick: diffusers' UNet2DModel at the twin's size, trained as the twin is (needs diffusers).
TRAIN_mnist-diffusers := --dataset mnist --kind diffusers --steps 13000
TRAIN_fashion-diffusers := --dataset fashion-mnist --kind diffusers --steps 13000

retrain-%: venv
	@test -n "$(TRAIN_$*)" || { echo "error: no shipped checkpoint is named '$*'" >&2; exit 1; }
	$(VENV)/bin/sddpm train runs/$* $(TRAIN_COMMON) $(TRAIN_$*)
	$(VENV)/bin/sddpm release runs/$*/last.pt checkpoints/$*.pt
	cp runs/$*/last.pt checkpoints/train/$*-last.pt

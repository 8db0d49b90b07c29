# valleys: two commands on a fresh machine.
#   make demo   create .venv, install, run the flagship reproduction (quick) and a curvature report
#   make test   create .venv, install, lint and run the test suite
#   make docs   build the API reference site into build/site (mkdocs --strict: warnings fail)
# torch: TORCH picks the wheel. The default pins the CPU build that this workplace keeps on
# disk; on a CUDA machine use e.g. `make test TORCH=torch` (or install torch first yourself:
# an already satisfied requirement is not reinstalled).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= results/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint docs bench bench-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/valleys reproduce linear-stability --quick --out $(OUT)/linear-stability
	$(BIN)/valleys curvature --problem digits-mlp --out $(OUT)/curvature
	@echo "demo reports: $(abspath $(OUT))/linear-stability/report.md and $(abspath $(OUT))/curvature"

lint: install
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/mypy

test: install lint
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The API reference site: README as the home page, docs/, the reports, one page per package.
$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The anchors of the benchmarks. BackPACK (and curvlinops through it) declare torchvision, which
# would pull a multi-GB CUDA torch, so they go in with --no-deps plus their light dependencies.
bench-deps: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m pip install -q --no-deps backpack-for-pytorch curvlinops-for-pytorch

bench: bench-deps
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache

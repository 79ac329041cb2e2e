# The two front-door commands (see README): `make demo` and `make test`.
# Both create/update .venv/ at the repository root from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine without CUDA, a CPU build of torch (this machine's pip serves 2.13.0 locally);
# override with e.g. `make TORCH_SPEC='torch>=2.2' test` to let pip choose.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The numeric floors are type-checked strictly (no untyped defs, no Any returned).
STRICT_PACKAGES := -p t2starmap.fit -p t2starmap.b0 -p t2starmap.noise

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo-output
	$(VENV)/bin/t2starmap bids_example demo-output participant
	$(VENV)/bin/t2starmap bids_example demo-output group
	@echo "Maps: demo-output/sub-*/[ses-*/]anat/; QC pages: demo-output/*.html; group table: demo-output/group_T2starmap.tsv"

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks run.py
	$(PY) -m ruff format --check src tests benchmarks run.py
	$(PY) -m mypy
	$(PY) -m mypy --strict $(STRICT_PACKAGES)

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_fit.py

clean:
	rm -rf $(VENV) demo-output

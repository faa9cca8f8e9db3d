# vlm-gateway: `make run` serves the offline default, `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRA  ?= cpu

.PHONY: install run test test-fast bench bench-workers lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRA),test,dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/vlm-gateway serve $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not engine" $(PYTEST_ARGS)

bench: install
	$(PY) -m bench $(ARGS)

bench-workers: install
	$(PY) -m bench.workers $(ARGS)

lint: install
	$(VENV)/bin/ruff check vlm_gateway tests bench

clean:
	rm -rf $(VENV) .pytest_cache

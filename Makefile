# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch when a wheel of it is at hand (PIP_FIND_LINKS), else the default build.
TORCH_SPEC ?= $(shell ls $${PIP_FIND_LINKS:-/nonexistent}/torch-*+cpu-*.whl >/dev/null 2>&1 && echo 'torch==2.13.0+cpu' || echo 'torch>=2.1,<3')
PYTEST_ARGS ?= -n 2
DEMO ?= demo

.PHONY: venv demo test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	touch $@

demo: venv
	$(VENV)/bin/neurodl-generate $(DEMO)/bids --kind shepplogan --n-subjects 8 --sessions 2 --seed 42 --overwrite
	$(PY) run.py $(DEMO)/bids $(DEMO)/bids/derivatives/neurodl participant --nprocs 2
	@echo "Tensors and sidecars are in $(DEMO)/bids/derivatives/neurodl"

test: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check bidsapp_dl tests run.py

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info

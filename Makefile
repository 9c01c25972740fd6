# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch when a wheel of it is at hand (PIP_FIND_LINKS), else the default build.
TORCH_SPEC ?= $(shell ls $${PIP_FIND_LINKS:-/nonexistent}/torch-*+cpu-*.whl >/dev/null 2>&1 && echo 'torch==2.13.0+cpu' || echo 'torch>=2.1,<3')
PYTEST_ARGS ?= -n 2
DEMO ?= demo

.PHONY: venv demo test test-slow lint clean container-test bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py bidsapp_dl/extract/_kernels.c
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	touch $@

# trivial data (one hemisphere darker in AD), 4 mm tensors: a few minutes on 2 CPU cores
demo: venv
	$(VENV)/bin/neurodl-generate $(DEMO)/bids --kind trivial --n-subjects 40 --sessions 1 --seed 42 --voxel-size 3 --overwrite
	$(PY) run.py $(DEMO)/bids $(DEMO)/bids/derivatives/neurodl participant --nprocs 2 \
		--voxel-size 4 --target-shape 48 56 48
	$(PY) run.py $(DEMO)/bids $(DEMO)/bids/derivatives/neurodl group --maps-name demo --overwrite \
		--task classification --label diagnosis --mode image --architecture Conv5_FC3 \
		--n-splits 2 --test-size 0.25 --epochs 15 --batch-size 4 --learning-rate 1e-3 \
		--selection-metrics loss BA --seed 42
	@$(PY) -c "import pandas as p; s = p.read_csv('$(DEMO)/bids/derivatives/neurodl/maps/demo/summary.tsv', sep='\t'); \
		r = s[(s.group == 'test') & (s.level == 'image') & (s.metric == 'BA') & (s.selection == 'BA')].iloc[0]; \
		print(f'test balanced accuracy (image level, best-BA models): {r[\"mean\"]:.3f} +/- {r.sd:.3f} over {r.n_splits} splits')"
	@echo "MAPS: $(DEMO)/bids/derivatives/neurodl/maps/demo"
	@echo "report: $(DEMO)/bids/derivatives/neurodl/maps/demo/report.html"
	@echo "QC of the extracted tensors: $(DEMO)/bids/derivatives/neurodl/qc.html"

# the tests marked slow (kill -9 at random moments, racing jobs, a full disk...) run apart
test: venv
	bash scripts/ensure-chromium.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS) -m "not slow"

test-slow: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS) -m slow

# the image with the CPU torch, run read-only, offline and non-root on generated data
container-test: venv
	bash scripts/container-test.sh

# the performance suite: ratios against I/O and compute floors measured in the same run
bench: venv
	$(PY) benchmarks/run.py

lint: venv
	$(VENV)/bin/ruff check bidsapp_dl tests run.py

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info

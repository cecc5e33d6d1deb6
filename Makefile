# Two entry points: `make demo` and `make test`. Both create/use the venv and install from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-compress test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The product's main job on the embedded digits data: a quick frontier search (ResNet-18, 0.02 GMACs),
# then its review from MLflow. A fresh search name per run; `make demo-compress` runs one M2M-DC plan.
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) search/frontier.py --budget-gmacs 0.02 --dataset digits --profile quick --name $(DEMO_NAME)
	$(PY) analysis/review.py --experiment $(DEMO_NAME)

demo-compress: $(STAMP)
	$(PY) -m m2mdc.demo

# Two pytest workers, one test file each at a time (module fixtures stay in one process); the README's
# commands are spread over several files (tests/readme.py) so that no file is much over ~10 min. The
# suite is CPU-bound on two cores: clean clone, cold caches, 2-core EPYC VM, 2022 s with three workers
# and the README in one test, 2070 s with two workers and it split, 2332 s with three workers and it
# split (concurrent Ray searches and timings slowed each other ~3x). Passive OpenMP waiting keeps the
# workers' thread pools from spinning against each other. --no-loadscope-reorder keeps the files in the
# order tests/conftest.py gives them (longest first; xdist's default sorts by test count; xdist >= 3.8).
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=40 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/data_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

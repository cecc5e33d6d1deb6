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

# Three pytest workers on two cores, one test file each at a time (module fixtures stay in one
# process): much of the suite waits (subprocess start-up, Ray start and teardown, polls, 1-CPU search
# trials), so two workers left the CPU ~27 % idle (measured: 2 workers 2215 s at 146 % CPU; 3 workers
# 2022 s at 152 %). Passive OpenMP waiting keeps the workers' thread pools from spinning against each
# other. --no-loadscope-reorder keeps the files in the order tests/conftest.py gives them (longest
# first); xdist's default reorders by test count, which queued the one-test README file last and left
# workers idle at the end (the option is xdist >= 3.8).
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=40 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/data_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

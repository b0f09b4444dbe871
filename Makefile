# `make run` and `make test` set up .venv on first use (CPU PyTorch pinned), then do their job.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup run test bench mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fedplug --cfg configs/fedavg_lr_on_synthetic.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=20

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_fedavg_synthetic.py

# Mutation testing (mutmut), not part of `make test`: docs/testing.md. MODULES=fedplug/run/early_stop.py
# for some modules only; stops after MUTATION_BUDGET seconds, and a rerun continues where it stopped.
MODULES ?=
MUTATION_BUDGET ?= 3300
mutation: $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[mutation]'
	$(VENV)/bin/python tools/mutation.py --budget $(MUTATION_BUDGET) $(MODULES)

clean:
	rm -rf $(VENV) exp .mutation

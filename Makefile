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

# Two pytest-xdist workers, one PyTorch thread each (2 cores), whole files per worker (module fixtures made once);
# then the tests marked `serial` (a deadline they are about, a local Ray cluster) alone. The second part runs
# even if the first failed; the first failure's status is kept. docs/testing.md, "Parallel tests".
test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile -m "not serial" --durations=20; \
	parallel=$$?; $(VENV)/bin/python -m pytest -q -m serial --durations=10 && exit $$parallel

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

# Set-up and the main entry points. Every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-cluster slurm-up slurm-down lint bench bench-large calibration clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: on these machines plain `torch torchvision` resolve to matching builds on local disk.
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e '.[dev,slurm]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) run.py experiment=demo

test: $(STAMP)
	$(PY) -m pytest -q

# A one-node SLURM on this machine (slurm-wlm, slurmdbd, munge and MariaDB installed as root when missing; state in
# .slurm/). Other shells then need: export SLURM_CONF=$$PWD/.slurm/slurm.conf
slurm-up:
	scripts/slurm.sh up

slurm-down:
	scripts/slurm.sh down

# Sweeps through hydra/launcher=slurm against that SLURM (tests/cluster/, not part of `make test`); SLURM is
# stopped afterwards. Where the packages cannot be installed (not root), slurm.sh exits 2 and the tests skip.
test-cluster: $(STAMP)
	scripts/slurm.sh up || [ $$? -eq 2 ]
	SLURM_CONF=$(CURDIR)/.slurm/slurm.conf $(PY) -m pytest -q --basetemp=$(CURDIR)/.slurm/tmp tests/cluster; status=$$?; scripts/slurm.sh down; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check treg_exp tests scripts benchmarks run.py
	$(VENV)/bin/ruff format --check treg_exp tests scripts benchmarks run.py

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

# SDXL and SD3.5-medium full-size architectures (random weights) at 1024 px: pass seconds, DC- and LDPS-step memory (minutes).
bench-large: $(STAMP)
	$(PY) benchmarks/large_priors.py --model sdxl_random
	$(PY) benchmarks/large_priors.py --model sd35_medium_random

# Every solver against the exact posterior on the Gaussian prior: writes benchmarks/CALIBRATION.md (a few minutes).
calibration: $(STAMP)
	$(PY) benchmarks/calibration.py
	$(PY) benchmarks/calibration.py --model gaussian_flow

clean:
	rm -rf $(VENV) outputs multirun

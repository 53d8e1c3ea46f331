# Set-up and the main entry points. Every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test slurm-up slurm-down lint bench calibration clean

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

lint: $(STAMP)
	$(VENV)/bin/ruff check treg_exp tests scripts benchmarks run.py
	$(VENV)/bin/ruff format --check treg_exp tests scripts benchmarks run.py

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

# Every solver against the exact posterior on the Gaussian prior: writes benchmarks/CALIBRATION.md (a few minutes).
calibration: $(STAMP)
	$(PY) benchmarks/calibration.py

clean:
	rm -rf $(VENV) outputs multirun

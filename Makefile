# The README's commands. Every target sets itself up from nothing: a fresh machine has no torch
# and no virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of this version lies on this machine's disk, so set-up needs no multi-GB download.
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test proto clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(PY) -m offline.demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

proto: install
	$(PY) -m common.protogen

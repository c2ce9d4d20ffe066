VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: test setup bench clean

$(VENV)/.ready: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

setup: $(VENV)/.ready

test: setup
	$(PY) -m pytest tests

bench: setup
	$(PY) benchmarks/thinker_cpu.py

clean:
	rm -rf $(VENV) build src/*.egg-info

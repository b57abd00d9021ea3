# Set-up and entry points. `make test` and `make eval` work on a fresh machine:
# they create .venv, install torch==2.13.0 first (CPU wheel; an unpinned torch pulls a
# multi-GB CUDA build), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BANKING77 ?= ../shared/data/banking77

.PHONY: venv test eval demo lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Main job (until the LLM eval lands): build the banking-77 retriever with each feature
# set, measure build time / latency / memory / retrieval quality, write eval/results/.
eval: venv
	$(PY) eval/bench_features.py --data $(BANKING77)

demo: venv
	$(PY) eval/demo.py --data $(BANKING77)

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

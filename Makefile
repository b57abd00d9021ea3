# Set-up and entry points. `make eval` and `make test` work on a fresh machine: they
# create .venv, install torch==2.13.0 first (CPU wheel; an unpinned torch pulls a
# multi-GB CUDA build), then the package with its extras. llama-cpp-python (the
# embedded LLM server) is built with GGML_NATIVE=OFF: the native build crashes here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BANKING77 ?= ../shared/data/banking77
# runs/ is ignored by git: a user's run never overwrites committed results
EVAL_OUT ?= runs/banking77-gemma3-270m
EVAL_LIMIT ?= 240

.PHONY: venv test test-fast eval bench demo lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install -e ".[dev,llm,reader,milvus,ray,dspy,serve]"
	touch $@

venv: $(VENV)/.installed

# Both tiers: the fast one (tests/data fixture, no data folder, no LLM server) and the slow one
# (@pytest.mark.slow: the full banking-77 pool and the real llama.cpp server).
test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The edit loop: the fast tier only (about 2 minutes on 2 cores).
test-fast: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

# Main job: build the banking-77 retrievers and run the in-context-learning comparison
# (fungi, embedding, random; k = 20; a seeded sample of test queries) against the
# embedded local LLM (Gemma 3 270M); writes report.json / report.md / report.html / plots to EVAL_OUT.
# The committed run of this command is eval/results/banking77-gemma3-270m.
eval: venv
	$(VENV)/bin/icl-fungi eval --data $(BANKING77) --selectors fungi,embedding,random -k 20 \
		--limit $(EVAL_LIMIT) --seed 0 --out $(EVAL_OUT)

# Build-time / latency / memory / retrieval-quality benchmark of the feature sets.
bench: venv
	$(PY) eval/bench/bench_features.py --data $(BANKING77)

demo: venv
	$(PY) eval/checks/demo.py --data $(BANKING77)

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The two commands a new user runs are `make demo` and `make test`; both set up .venv/ first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean
setup:
	@bash tools/setup_env.sh
	@bash tools/setup_wordnet.sh
	@bash tools/setup_browser.sh

demo: setup
	$(PY) -m vt_ray demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Pure-Python tests only (no vLLM, no Ray): seconds.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks.run_all

clean:
	rm -rf outputs .pytest_cache

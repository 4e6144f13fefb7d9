# The two commands a new user runs are `make demo` and `make test`; both set up .venv/ first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-unit lint bench clean
setup:
	@bash tools/setup_env.sh
	@bash tools/setup_wordnet.sh
	@bash tools/setup_browser.sh

demo: setup
	$(PY) -m vt_ray demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (vLLM engines, Ray jobs): about 3 minutes.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# tests/unit only: no Ray, no vLLM, no process, no torch.distributed (enforced by tests/unit/conftest.py).
test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Lint (ruff) and type checks (mypy; strict for algo/rewards/config/common/trace), configured in pyproject.toml.
lint: setup
	$(VENV)/bin/ruff check vt_ray data_pipeline tests benchmarks tools
	$(VENV)/bin/mypy vt_ray data_pipeline

bench: setup
	$(PY) -m benchmarks.run_all

clean:
	rm -rf outputs .pytest_cache

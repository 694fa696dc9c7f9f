# hoptrace: `make demo` to see it, `make test` to prove it, `make bench` to measure it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test unit bench lint typecheck brokers brokers-down clean

# The install compiles the optional C module hoptrace._speedups; under CI=true a failed
# compile is an error rather than a pure-Python install.
$(STAMP): pyproject.toml hatch_build.py src/hoptrace/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	HOPTRACE_REQUIRE_SPEEDUPS=$${CI:-} $(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hoptrace demo

# Installs everything (Chromium for the HTML report test too), starts RabbitMQ, Redis and
# Kafka, then runs the whole suite; then the header tests again on the pure-Python code that
# the C speedups stand in for.
PURE_PYTHON_TESTS := tests/unit/test_propagation.py tests/unit/test_fuzz_extract.py \
	tests/unit/test_bad_input.py tests/unit/test_hop.py tests/unit/test_speedups.py \
	tests/unit/test_celery.py

test: $(STAMP)
	scripts/chromium
	scripts/brokers up
	$(PY) -m pytest $(PYTEST_ARGS)
	HOPTRACE_PURE_PYTHON=1 $(PY) -m pytest -m "not long" $(PYTEST_ARGS) $(PURE_PYTHON_TESTS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	scripts/brokers up
	$(PY) bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m mypy

brokers:
	scripts/brokers up

brokers-down:
	scripts/brokers down

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist

# hoptrace: `make demo` to see it, `make test` to prove it, `make bench` to measure it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test unit bench lint typecheck brokers brokers-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hoptrace demo

# Installs everything (Chromium for the HTML report test too), starts RabbitMQ, Redis and
# Kafka, then runs the whole suite.
test: $(STAMP)
	scripts/chromium
	scripts/brokers up
	$(PY) -m pytest $(PYTEST_ARGS)

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

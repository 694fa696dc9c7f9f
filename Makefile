# hoptrace: `make demo` to see it, `make test` to prove it, `make bench` to measure it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test unit bench lint typecheck brokers brokers-down clean

# The install compiles the optional C module hoptrace._speedups; under CI=true a failed
# compile is an error rather than a pure-Python install. uv resolves the dev extra: when
# OpenTelemetry contrib publishes a release for some of its packages and not yet for others,
# pip's resolver gives up (ResolutionImpossible) where uv picks the newest consistent set.
# --reinstall-package: uv would otherwise reuse its cached build of hoptrace and its C module.
$(STAMP): pyproject.toml hatch_build.py src/hoptrace/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	HOPTRACE_REQUIRE_SPEEDUPS=$${CI:-} $(PY) -m uv pip install -q --python $(PY) \
		--reinstall-package hoptrace -e '.[all,dev]'
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

# Every variant per client side by side (plain, static headers, hoptrace propagation-only and
# with spans, OTel contrib, ddtrace, and the 1%-sampled setup) in CPU time (the targets) and
# wall time, then the core, memory and metrics targets and the callgrind instruction counts
# of every client and of target 1 against the peers (skipped without valgrind): one summary,
# in bench/results/summary.md (about 35-45 minutes, most of it the memory soak and callgrind;
# BENCH_ARGS=--quick for about 10, BENCH_ARGS="hop --clients pika" for one stage and client).
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

# The version matrix (noxfile.py): Python 3.10-3.13, plus the oldest and the newest release of
# every dependency; each cell builds the wheel with the C module and runs the unit suite and a
# fast integration subset. Venvs are reused between runs (nox -r, under build/nox).
# `make matrix-ci` runs the cells `make test` does not cover (3.10, 3.12, 3.13, oldest).
# `make matrix MATRIX_ARGS="-s oldest"` picks sessions; `nox -l` lists them.
.PHONY: matrix matrix-ci package-test

matrix: $(STAMP)
	scripts/brokers up
	$(PY) -m nox -r $(MATRIX_ARGS)

# Two shards side by side (one per core; most of a cell's time is one pytest process), each
# logged to build/matrix-ci-N.log and printed when both are done.
matrix-ci: $(STAMP)
	scripts/brokers up
	mkdir -p build
	HOPTRACE_MATRIX_SHARD=0/2 $(PY) -m nox -r -t ci $(MATRIX_ARGS) >build/matrix-ci-0.log 2>&1 & \
	pid=$$!; \
	HOPTRACE_MATRIX_SHARD=1/2 $(PY) -m nox -r -t ci $(MATRIX_ARGS) >build/matrix-ci-1.log 2>&1; \
	one=$$?; wait $$pid; zero=$$?; \
	cat build/matrix-ci-0.log build/matrix-ci-1.log; \
	echo "matrix-ci: shard 0 exit $$zero, shard 1 exit $$one"; \
	test $$zero -eq 0 && test $$one -eq 0

# The release check: `python -m build` (the sdist, then the wheel built from it, with
# the C module), `twine check`, the contents of both, and fresh installs of the wheel with [all]
# (running `hoptrace demo` and every example: the broker ones need the local brokers) and with
# no extras (tests/package/check.py).
package-test: $(STAMP)
	scripts/brokers up
	$(PY) tests/package/check.py

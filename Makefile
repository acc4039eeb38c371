# Two commands do everything: `make demo` runs the loop, `make test` passes the tests.
UV_VERSION := 0.13.8
PYTHON ?= python3
UV := $(PYTHON) -m uv

.PHONY: demo test lint bench env

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	# --compile-bytecode: every process (the server, a worker's flow run, a test's `eventpipe
	# up`) then loads compiled modules, even where PYTHONDONTWRITEBYTECODE keeps Python from
	# caching them: Prefect + eventpipe import in about 2 s instead of 7 on this machine.
	$(UV) sync --frozen --all-extras --compile-bytecode --python $(PYTHON)
	@touch $@

env: .venv/.synced

demo: .venv/.synced
	.venv/bin/eventpipe up --samples 3

lint: .venv/.synced
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

test: lint
	.venv/bin/pytest

# Every benchmark in one run, then the results table (bench/results/suite.json):
# `make bench BENCH_ARGS=--quick` for a short run, BENCH_ARGS="--only throughput,idle" for some.
bench: .venv/.synced
	.venv/bin/python bench/suite.py $(BENCH_ARGS)

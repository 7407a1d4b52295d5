# The two commands that matter: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: install run migrate worker serve test test-sqlite test-postgres lint sandbox bench clean \
        reliability reliability-postgres

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

migrate: install
	$(BIN)/flask --app app bridge migrate

# The bridge on http://$(HOST):$(PORT): SQLite ledger in ./instance, migrations applied,
# sandbox mode (built-in Reteno simulator) unless RETENO_APP_UUID/RETENO_API_KEY are set.
run: migrate
	$(BIN)/flask --app app run --host $(HOST) --port $(PORT)

# Production-style: gunicorn serving, no background thread, one separate delivery worker.
# Threaded workers: concurrent registrations share one flushed commit (BENCHMARKS.md).
serve: migrate
	BRIDGE_BACKGROUND_DELIVERY=false $(BIN)/gunicorn -w 2 -k gthread --threads 16 \
		-b $(HOST):$(PORT) app:app & \
	$(BIN)/flask --app app bridge deliver

worker: migrate
	$(BIN)/flask --app app bridge deliver

sandbox: install
	$(BIN)/python -m bridge.sandbox --port 8025

# The whole suite: lint, then the tests on SQLite, then again on PostgreSQL.
test: install lint test-sqlite test-postgres

lint: install
	$(BIN)/ruff check .

test-sqlite: install
	$(BIN)/python -m pytest

test-postgres: install
	@if reason=$$($(BIN)/python -m tests.postgres_check); then \
		BRIDGE_TEST_DATABASE=postgres $(BIN)/python -m pytest; \
	else \
		echo "SKIPPED the PostgreSQL run of the suite: $$reason"; \
	fi

# The reliability figures at full size (RELIABILITY.md): upstream faults, kill -9,
# hostile input. Minutes, not seconds; `make test` runs scaled-down versions.
RELIABILITY_PG ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

reliability: install
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/crashes.py
	$(BIN)/python bench/fuzz.py

# The same on PostgreSQL: two gunicorn instances and two delivery workers share the outbox.
reliability-postgres: install
	$(BIN)/python bench/faults.py --database-url $(RELIABILITY_PG) --servers 2 --workers 2
	$(BIN)/python bench/crashes.py --database-url $(RELIABILITY_PG) --servers 2 --workers 2
	$(BIN)/python bench/fuzz.py --database-url $(RELIABILITY_PG)

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache *.egg-info

# The speed figures (BENCHMARKS.md): each script starts what it needs, measures its
# baseline and the bridge in one run, and prints the ratios and PASS/FAIL per target.
# Several minutes in all (the 1,000,000-registration runs dominate); QUICK=1 for a short run.
BENCHES ?= register delivery lookup webhooks memory

bench: install
	@status=0; for b in $(BENCHES); do \
		echo "== bench/bench_$$b.py"; \
		$(BIN)/python bench/bench_$$b.py $(if $(QUICK),--quick) || status=1; \
	done; exit $$status

# The two commands that matter: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: install lock run migrate worker serve test test-client test-sqlite test-postgres lint audit docs sandbox bench clean \
        reliability reliability-postgres

$(BIN)/.installed: pyproject.toml client/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,docs]'
	$(BIN)/python -m pip install --quiet -c constraints.txt -e './client[aiogram,ptb]'
	touch $@

install: $(BIN)/.installed

migrate: install
	$(BIN)/flask --app app bridge migrate

# Pin every dependency (constraints.txt, which `install` uses) for reproducible installs:
# resolved afresh in a scratch virtualenv. Run it after changing pyproject.toml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[test,docs,fuzz,mutation]' -e './client[aiogram,ptb]'
	.lock-venv/bin/python -m pip freeze --exclude-editable > constraints.txt
	rm -rf .lock-venv

# The bridge on http://$(HOST):$(PORT): SQLite ledger in ./instance, migrations applied,
# sandbox mode switched on (the built-in Reteno simulator; development only).
run: export BRIDGE_SANDBOX ?= true
run: migrate
	$(BIN)/flask --app app run --host $(HOST) --port $(PORT)

# Production-style: the Procfile's processes under honcho (gunicorn with bridge/gunicorn_conf.py,
# and a separate delivery worker); one Ctrl-C or SIGTERM stops all, and so does one dying.
serve: migrate
	HOST=$(HOST) PORT=$(PORT) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start

worker: migrate
	$(BIN)/flask --app app bridge deliver

sandbox: install
	$(BIN)/python -m bridge.sandbox --port 8025

# The whole suite: lint, the dependency audit, the docs, then the tests on SQLite, then again
# on PostgreSQL.
test: install lint audit docs test-client test-sqlite test-postgres

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pip-audit of the locked set (tools/audit.py): fails on a pin with a known vulnerability,
# and says so and passes when the advisory database cannot be reached.
audit: install
	$(BIN)/python tools/audit.py --self-check constraints.txt

# The documentation site (docs/) in docs/_build/html: warnings are errors, so a broken internal
# link or reference (-n: any unresolved one) fails; the references are generated from the code.
docs: install
	rm -rf docs/_build
	$(BIN)/sphinx-build -q -W --keep-going -n -b html docs docs/_build/html

# The client's own tests (client/tests: no network, no Flask; its own pytest settings).
test-client: install
	$(BIN)/python -m pytest client/tests

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
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[fuzz]'
	$(BIN)/python bench/fuzz.py

# The same on PostgreSQL: two gunicorn instances and two delivery workers share the outbox.
reliability-postgres: install
	$(BIN)/python bench/faults.py --database-url $(RELIABILITY_PG) --servers 2 --workers 2
	$(BIN)/python bench/crashes.py --database-url $(RELIABILITY_PG) --servers 2 --workers 2
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[fuzz]'
	$(BIN)/python bench/fuzz.py --database-url $(RELIABILITY_PG)

clean:
	rm -rf $(VENV) .lock-venv instance .pytest_cache .ruff_cache *.egg-info docs/_build build dist \
		client/build client/dist client/src/*.egg-info bench/results mutation/sessions

# The speed figures (BENCHMARKS.md): each script starts what it needs, measures its
# baseline and the bridge in one run, and prints the ratios and PASS/FAIL per target.
# Several minutes in all (the 1,000,000-registration runs dominate); QUICK=1 for a short run.
BENCHES ?= register delivery events lookup webhooks memory

bench: install
	@status=0; for b in $(BENCHES); do \
		echo "== bench/bench_$$b.py"; \
		$(BIN)/python bench/bench_$$b.py $(if $(QUICK),--quick) || status=1; \
	done; exit $$status

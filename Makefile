# Two entry points: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PG_BIN := /usr/lib/postgresql/15/bin

.PHONY: demo test lint bench install system-deps clean lock

demo: install
	$(PY) -m deployments.demo

test: install
	$(PY) -m pytest tests -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/backup.py
	$(PY) bench/deploy.py
	$(PY) bench/pitr.py
	$(PY) bench/failover.py

install: system-deps $(STAMP)

# PostgreSQL 15 server and client tools, pgBackRest (physical backups and PITR), and zstd (the
# manual restore in docs/operations.md), from Debian, when missing.
system-deps:
	@if [ ! -x $(PG_BIN)/initdb ] || [ ! -x $(PG_BIN)/pg_restore ] || [ ! -f /usr/share/postgresql/15/extension/amcheck.control ] || ! command -v zstd >/dev/null || ! command -v pgbackrest >/dev/null; then \
	  echo "installing PostgreSQL 15, pgBackRest and zstd from Debian"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends postgresql-15 postgresql-client-15 postgresql-contrib pgbackrest zstd; \
	fi

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip sync -q --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -p 3.11 -o requirements.lock --no-header

clean:
	rm -rf $(VENV) .pytest_cache

# The two commands a new user needs: `make run` and `make test`. Everything installs into .venv
# from requirements.lock, so a clean machine gets exactly what CI tested.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install tools redis-server run reset test lint typecheck rules pytest bench screenshots lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# pip's own chatter goes to .venv/install.log, shown whole if the install fails.
$(STAMP): requirements.lock pyproject.toml
	@echo "make: installing the locked Python packages into $(VENV) (the first time: about a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --quiet --upgrade pip \
		&& $(BIN)/python -m pip install --quiet -r requirements.lock \
		&& $(BIN)/python -m pip install --quiet --no-deps -e . ; } > $(VENV)/install.log 2>&1 \
		|| { cat $(VENV)/install.log; echo "make: the install failed (above)" >&2; exit 1; }
	@echo "make: installed"
	@touch $@

install: $(STAMP) ## create .venv and install the locked dependencies

# wrk drives the soak test and the benchmark: a real load generator, from Debian's packages.
# docker-compose (Debian's v1) validates docker-compose.yml in tests/test_compose.py; `config`
# needs no Docker engine, so the engine it recommends is not installed. promtool (Debian's
# prometheus package, without the server's recommends) checks deploy/prometheus/alerts.yml.
# chromium is the browser the console's tests drive through Playwright (executable_path).
tools: ## install wrk, docker-compose, promtool and chromium from Debian's packages if missing
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq wrk; } \
		|| { echo "make: wrk is needed: apt-get install wrk" >&2; exit 1; }
	@command -v docker-compose >/dev/null || apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose; } \
		|| { echo "make: docker-compose is needed: apt-get install docker-compose" >&2; exit 1; }
	@command -v promtool >/dev/null || apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } \
		|| { echo "make: promtool is needed: apt-get install prometheus" >&2; exit 1; }
	@command -v chromium >/dev/null || apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } \
		|| { echo "make: chromium is needed: apt-get install chromium" >&2; exit 1; }
	@command -v redis-server >/dev/null || { echo "make: redis-server is needed: apt-get install redis-server" >&2; exit 1; }

# make run starts a private Redis from this binary when none answers (cli/local_services.py);
# a Redis of your own (REDIS_URL) needs none, so a failed install is said and not fatal.
redis-server:
	@command -v redis-server >/dev/null || apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1; } \
		|| echo "make: redis-server is not installed and apt-get could not install it (not Debian, or not root):" \
			"install Redis >= 7 yourself (brew install redis, dnf install redis) or set REDIS_URL to one" >&2

run: install redis-server ## bootstrap + migrate the database, then run the receiver and a worker
	$(BIN)/crm-run

LOCAL_SERVICES_DIR ?= .run
reset: ## forget make run's private PostgreSQL and Redis (their data in .run/)
	@pid=$$(head -1 $(LOCAL_SERVICES_DIR)/postgres/postmaster.pid 2>/dev/null); \
		if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then \
			echo "make: the private PostgreSQL still runs (pid $$pid): stop make run first" >&2; exit 1; fi
	rm -rf $(LOCAL_SERVICES_DIR)

lint: install ## ruff: lint and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy, strict
	$(BIN)/mypy

rules: tools ## promtool: the Prometheus alerting rules in deploy/prometheus
	promtool check rules deploy/prometheus/alerts.yml

pytest: install tools ## the test suite alone (real PostgreSQL, Redis, Celery)
	$(BIN)/pytest

test: lint typecheck rules pytest ## ruff, mypy, promtool and the whole test suite

bench: install tools ## throughput and latency against same-run references; writes bench/results.json
	$(BIN)/python -m bench.run

screenshots: install tools ## demo data, then a PNG of each console page in docs/console/
	PYTHONPATH=. $(BIN)/python docs/screenshots.py

lock: ## re-resolve requirements.lock from pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

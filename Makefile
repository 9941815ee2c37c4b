# The two commands: `make serve` (run the service) and `make test` (run every test).
# Both are idempotent: the virtualenv is (re)installed only when pyproject.toml is newer than its stamp.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test install install-test system-deps clean

serve: $(STAMP)
	$(BIN)/distill serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: system-deps $(TEST_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(STAMP)

install-test: $(TEST_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# The test extra includes the runtime dependencies, so it satisfies `serve` too.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $@ $(STAMP)

# The tests start their own redis-server, PostgreSQL and headless chromium; install them only when missing,
# and refresh the package index only when the install cannot proceed without it.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing \
		|| { $(SUDO) apt-get update && \
		     $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; }; \
	fi

clean:
	rm -rf .pytest_cache build dist *.egg-info

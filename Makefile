# Two commands a new user needs: `make up` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: up test test-unit lint kafka-jars chromium prometheus console clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fetch the pinned Apache Kafka broker's jars from Maven Central (cached in ~/.m2).
kafka-jars: $(STAMP)
	$(BIN)/jobstream kafka --provision-only

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`).
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Chromium for tests/test_browser.py (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "tests/test_browser.py needs Chromium at $(CHROMIUM): run 'sudo apt-get install chromium' (Debian)" >&2; \
		exit 1; \
	fi

# tests/test_metrics.py and tests/test_prometheus.py run Debian's promtool and a real Prometheus server.
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Prometheus for tests/test_metrics.py and tests/test_prometheus.py (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; \
	else \
		echo "the metrics tests need prometheus and promtool: run 'sudo apt-get install prometheus' (Debian)" >&2; \
		exit 1; \
	fi

# The console's (/ui) front-end libraries, from npm at the versions in console/package-lock.json.
CONSOLE_STAMP := console/node_modules/.installed
$(CONSOLE_STAMP): console/package.json console/package-lock.json
	@command -v npm >/dev/null || { echo "the console (/ui) needs Node.js 20+ and npm: apt-get install nodejs npm" >&2; exit 1; }
	cd console && npm ci --no-audit --no-fund --loglevel=error
	touch $(CONSOLE_STAMP)

console: $(CONSOLE_STAMP)

up: $(STAMP) kafka-jars console
	$(BIN)/jobstream up

test: $(STAMP) kafka-jars chromium prometheus console
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (lint, import order, format) and mypy over the packages; config in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not kafka" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .jobstream *.egg-info console/node_modules

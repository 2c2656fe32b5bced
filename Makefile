# Two commands a new user needs: `make up` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test test-unit kafka-jars clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fetch the pinned Apache Kafka broker's jars from Maven Central (cached in ~/.m2).
kafka-jars: $(STAMP)
	$(BIN)/jobstream kafka --provision-only

up: $(STAMP) kafka-jars
	$(BIN)/jobstream up

test: $(STAMP) kafka-jars
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not kafka" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .jobstream *.egg-info

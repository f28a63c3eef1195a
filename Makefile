# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp

.PHONY: install test lint typecheck demo bench sim soak clean

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing graphviz (Debian package, for polaris graph pictures)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package, for the web view's browser tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check $(wildcard polaris_celery worker tests bench examples)

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/pytest -q -ra

demo: install
	$(BIN)/python examples/demo.py

bench: install
	$(BIN)/python -m bench

sim: install
	$(BIN)/pytest -q -ra -m sim tests/sim

soak: install
	$(BIN)/pytest -q -ra -m soak tests/faults tests/sim

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

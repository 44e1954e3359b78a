# The two set-up commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.meshbridge-installed

.PHONY: demo test lint typecheck unit slow bench clean peers peers-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# Real Go peers from the Go module proxy into .peers/bin (peers/README.md); idempotent.
peers:
	peers/build.sh

peers-demo:
	peers/build.sh ghostunnel

demo: $(STAMP) peers-demo
	$(BIN)/meshbridge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict bridge sds_server istio scone

test: lint typecheck peers
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/svid_issue.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/sds_fanout.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .peers

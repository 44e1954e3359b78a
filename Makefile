# The two set-up commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.meshbridge-installed

.PHONY: demo test lint typecheck unit slow bench clean peers peers-demo image image-tools

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
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict bridge sds_server istio scone

test: lint typecheck peers
	$(BIN)/pytest

# The SDS server image as an OCI archive, without a Docker daemon: build/sds-server.oci.tar, tagged
# localhost/meshbridge/sds-server:<version> (image/build.sh: mmdebstrap + PyPI wheels + buildah).
image-tools:
	image/build.sh tools

image: image-tools
	image/build.sh

bench: $(STAMP)
	$(BIN)/python bench/svid_issue.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/sds_fanout.py --n 100 1000 10000
	$(BIN)/python bench/sds_names_churn.py
	$(BIN)/python bench/sds_message_cap.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .peers build

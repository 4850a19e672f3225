# flwrmtls: every install step lives here, so a fresh clone needs only `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

PROTO_SRC := $(wildcard protos/flwrmtls/proto/*.proto)

.PHONY: test demo proto proto-check lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check flwrmtls tests bench tools demo
	$(VENV)/bin/ruff format --check flwrmtls tests bench tools demo

typecheck: $(STAMP)
	$(VENV)/bin/mypy

proto: $(STAMP)
	$(PY) tools/genproto.py --out flwrmtls/proto

proto-check: $(STAMP)
	$(PY) tools/genproto.py --check flwrmtls/proto

test: $(STAMP) lint typecheck proto-check
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) demo/run.py

bench: $(STAMP)
	$(PY) bench/bench_auth.py
	$(PY) bench/bench_rounds.py
	$(PY) bench/bench_limits.py
	$(PY) bench/bench_compare.py
	$(PY) bench/bench_revocation.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo bench/.venv-flwr

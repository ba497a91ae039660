# Set-up for a fresh machine: `make demo` runs the demo, `make test` runs the tests.
# Both install first (into .venv/ here) when needed; a second install is a no-op.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench proto clean

install: $(STAMP)

# torch is pinned to the CPU build that lies on disk (any other spec pulls a
# multi-GB CUDA build) and installed before the extras so nothing replaces it.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[compute,mpc,test,experiments]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps crypten==0.4.1
	touch $(STAMP)

demo: install
	rm -rf demo-out demo-out.state
	$(VENV)/bin/dvsecure demo --out demo-out

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_plaintext.py
	$(PY) benchmarks/bench_audit.py
	$(VENV)/bin/dvsecure bench --backend mpc --queries 200 --classes 10 --sources 50 --parties 3
	$(PY) benchmarks/bench_enclave.py

# The committed gRPC code in dvsecure/wire/proto/ is generated from protocols/*.proto;
# tests/test_protocols_current.py fails if it is stale.
proto: install
	$(PY) -m grpc_tools.protoc -Idvsecure/wire/proto=protocols --python_out=. --grpc_python_out=. protocols/dvsecure.proto

clean:
	rm -rf $(VENV) demo-out demo-out.state .pytest_cache .hypothesis

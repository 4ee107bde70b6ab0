# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency list changes; a second run is fast.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt Makefile | sha256sum | cut -c1-16)
EXTRAS := all,ray,dev
# KServe's SDK clients, which tests call the server with, in a venv of their own: their pins (pandas < 3,
# protobuf < 7) conflict with ours. Only the tests need it.
KSERVE := .venv-kserve
KSTAMP := $(KSERVE)/.installed-$(shell cat constraints-kserve.txt | sha256sum | cut -c1-16)
# Cloud storage test servers (moto's S3, a GCS emulator, Azurite from npm) and Azure's SDK, in a venv of their own:
# moto's boto3 pins an older python-dateutil than ours. Only the tests need it.
CLOUD  := .venv-cloud
AZURITE := tests/server/azurite
CSTAMP := $(CLOUD)/.installed-$(shell cat constraints-cloud.txt $(AZURITE)/package-lock.json | sha256sum | cut -c1-16)

.PHONY: demo test lint typecheck unit bench clean setup

# The pinned packages (NumPy 2.3, pandas 3) need Python 3.11 or newer; an older one is refused in one line.
export NEEDS_PYTHON := import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else \
  f"polystack needs Python 3.11 or newer, and {sys.executable} is {v.major}.{v.minor}: run make PYTHON=python3.11 " \
  "(or newer), after rm -rf $(VENV) if it was made with this one")

setup: $(STAMP) $(KSTAMP) $(CSTAMP)

$(STAMP):
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -c "$$NEEDS_PYTHON"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` requirement would pull the CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# constraints.txt pins the versions we test with: fast, reproducible resolution (an open
	# resolve of this many packages can backtrack for many minutes and give up).
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

$(KSTAMP):
	test -x $(KSERVE)/bin/python || $(PYTHON) -m venv $(KSERVE)
	$(KSERVE)/bin/python -m pip install --quiet -c constraints-kserve.txt kserve==0.21.0
	rm -f $(KSERVE)/.installed-*
	touch $@

$(CSTAMP):
	test -x $(CLOUD)/bin/python || $(PYTHON) -m venv $(CLOUD)
	$(CLOUD)/bin/python -m pip install --quiet -c constraints-cloud.txt 'moto[server]' gcp-storage-emulator azure-storage-blob
	# Azurite, Microsoft's Azure Storage emulator, at the version its lock file pins (Node.js and npm: the machine's).
	rm -rf $(CLOUD)/azurite && mkdir -p $(CLOUD)/azurite && cp $(AZURITE)/package.json $(AZURITE)/package-lock.json $(CLOUD)/azurite/
	npm ci --prefix $(CLOUD)/azurite --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -f $(CLOUD)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/polystack demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Two workers, each taking whole files (a module's server starts once): most tests wait on a server, so on a
# 2-core machine the suite takes 8m47s where one worker took 17m26s. Ray tests run apart, inside a loopback-only
# network namespace: Ray's servers listen on every interface, and nothing here may talk beyond loopback.
unit: $(STAMP) $(KSTAMP) $(CSTAMP)
	$(BIN)/python -m pytest -q -m "not ray" -n 2 --dist loadfile
	unshare -n sh -c 'ip link set lo up && exec $(BIN)/python -m pytest -q -m ray tests/jobs'

test: lint unit

clean:
	rm -rf $(VENV) $(KSERVE) $(CLOUD) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

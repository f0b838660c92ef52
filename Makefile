# make test   set up (system packages as root, a venv in .venv) and run the tests
# make run    set up and mount the default machine at ./mnt in the foreground
# make bench  set up and run the benchmarks
# make test PYTEST_ARGS='-m "not mount"'   only the in-process tests (no mount, no daemon)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MNT    ?= mnt
# Set-up is redone only when the packaging changes or the venv is gone.
STAMP  := $(VENV)/.setup-done
PYTEST_ARGS ?=

.PHONY: all setup test lint run bench clean

all: test

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/install-system-deps
	PYTHON=$(PYTHON) scripts/install-system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# The per-test timeout (pytest-timeout, 120 s) is set in setup.cfg. Types and style first.
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Types (mypy, configured in pyproject.toml) and style (ruff).
lint: setup
	$(BIN)/ruff check dnumafs tests
	$(BIN)/mypy

run: setup
	@mkdir -p $(MNT) 2>/dev/null || true
	@echo "Mounting the default machine at ./$(MNT). From another terminal, for example:"
	@echo "  cat $(MNT)/sys/devices/system/node/node0/meminfo; $(BIN)/dnumafs hardware $(MNT)"
	@echo "  $(BIN)/dnumafs stripe $(MNT) 0 2 256; $(BIN)/dnumafs status $(MNT)"
	@echo "Stop with Ctrl-C here, or $(BIN)/dnumafs umount $(MNT)"
	$(BIN)/dnumafs mount $(MNT) --foreground

# The bench extra is py-spy, for the profile of the daemon's read path the bench prints.
BENCH_STAMP := $(VENV)/.bench-done

$(BENCH_STAMP): $(STAMP) scripts/install-bench-deps
	scripts/install-bench-deps
	$(BIN)/python -m pip install -e '.[test,bench]'
	touch $@

bench: setup $(BENCH_STAMP)
	$(BIN)/python -m dnumafs.bench --profile

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis

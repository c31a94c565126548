# rayfleet: `make demo` runs a local fleet with an MoE training job; `make test` runs the tests.
# Both build .venv and install everything they need first, Debian packages included.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
# Debian packages the tests and demo use (command to look for = package that provides it).
DEBS   := redis-server=redis-server chromium=chromium chromedriver=chromium-driver stress-ng=stress-ng
PYTEST_ARGS ?=

.PHONY: demo demo-data test test-gpu install system-deps bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0  # the CPU build on disk; the package accepts any torch >= 2.11
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

system-deps:
	@missing=""; for pair in $(DEBS); do cmd=$${pair%%=*}; pkg=$${pair#*=}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: install
	$(BIN)/rayfleet demo

# Your own data: Python's sources -> a trained tokenizer -> token shards -> a job with validation loss.
demo-data: install
	$(BIN)/rayfleet demo --own-data

PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

# One pytest process. The real-Ray modules each bring up a fleet of 3 to 5 Ray nodes; on CI's 2
# cores, modules side by side (pytest-xdist) saved 2 of 25 minutes and let a loaded head miss
# `ray start`'s 30 s window (2026-11-25), and with other work on the machine three at once made
# fleets take over 10 minutes to come up (2026-12-07).
test: install
	$(PYTEST) --durations=30 $(PYTEST_ARGS) tests

# On a machine with a CUDA GPU: the kernels and the compiled model against float64 references.
test-gpu: install
	$(PYTEST) $(PYTEST_ARGS) tests_gpu

bench: install
	$(BIN)/python bench/fleet_up.py

clean:
	rm -rf $(VENV) .pytest_cache

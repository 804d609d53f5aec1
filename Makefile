# Two entry points for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Programs the tests start themselves (their own nats-server for the fault tests).  As root (CI),
# missing ones are installed from Debian; elsewhere they are named and those tests skip.
# PACKAGE or PACKAGE:PROGRAM when the program is named otherwise (mosquitto_ctrl comes with mosquitto-clients).
SYSTEM_PACKAGES := nats-server mosquitto mosquitto-clients:mosquitto_ctrl openssl nftables:nft chromium

.PHONY: demo test lint bench install clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fleetwarden demo

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do prog=$${p#*:}; pkg=$${p%%:*}; \
	  command -v $$prog >/dev/null 2>&1 || [ -x /usr/sbin/$$prog ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; (apt-get update -q && apt-get install -y -q $$missing) >/dev/null \
	      || echo "could not install:$$missing (the tests that need it will say so)"; \
	  else echo "missing:$$missing (tests that need it are skipped; as root, make test installs it)"; fi; \
	fi

test: $(STAMP) system-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -n auto

bench: $(STAMP)
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

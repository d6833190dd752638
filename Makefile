# wg-py: build, lint, test, demo. Run as root on Debian (deps installs system packages).
#   make test   deps + venv + in-place build + lint + the whole test suite
#   make demo   deps + venv + build, then the demo (python -m tunnel.lab.demo)
#   make fuzz   the fuzz tests with FUZZ_EXAMPLES examples each (not part of make test),
#               stopped after FUZZ_SECONDS at most

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.wgpy-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DEB_PACKAGES := wireguard-go wireguard-tools iperf3 iputils-ping ncat iptables iproute2 \
	libssl-dev libsodium-dev python3-venv python3-dev gcc containernetworking-plugins \
	prometheus tmux systemd etcd-server etcd-client

.PHONY: all deps venv build lint test fuzz demo bench soak clean distclean

all: build

# Installs only what is missing, so a second run is fast and works offline.
deps:
	@missing=""; \
	for pkg in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

venv: $(VENV_STAMP)

# Editable install (with the test extras); the stamp makes re-runs instant until the
# packaging files change.
$(VENV_STAMP): pyproject.toml setup.py | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check 'setuptools>=68' wheel 'Cython>=3.0'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[test]'
	touch $@

# The .so lands next to its .pyx; Cython and setuptools skip the work when nothing changed.
build: venv
	$(PY) setup.py --quiet build_ext --inplace

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy crypto tunnel

test: build lint
	$(PY) -m pytest tests -q

# Every fuzz test (tests/fuzzing.py reads WGPY_FUZZ_EXAMPLES) with many more examples.
FUZZ_EXAMPLES ?= 20000
FUZZ_SECONDS ?= 3600
FUZZ_TESTS := tests/test_twin_fuzz.py tests/test_decoder_fuzz.py tests/test_vxlan_fuzz.py

fuzz: build
	WGPY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) timeout --signal=INT --kill-after=60 $(FUZZ_SECONDS) \
		$(PY) -m pytest $(FUZZ_TESTS) -q --hypothesis-show-statistics

demo: build
	$(PY) -m tunnel.lab.demo

# The chart needs matplotlib (the optional "bench" extra).
bench: build
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[bench]'
	$(VENV)/bin/wg-py bench

# Soak (bench/soak.py): SOAK_MINUTES of traffic and `wg set` churn through wg-py pairs; not a test.
SOAK_MINUTES ?= 10
soak: build
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[bench]'
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find crypto tunnel -name '*.so' -delete
	for pyx in $$(find crypto tunnel -name '*.pyx'); do rm -f "$${pyx%.pyx}.c"; done
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# wg-py: build, lint, test, demo. Run as root on Debian (deps installs system packages).
#   make test   deps + venv + in-place build + lint + the whole test suite
#   make demo   deps + venv + build, then the demo (python -m tunnel.lab.demo)
#   make fuzz   every atheris target in fuzz/ for FUZZ_SECONDS each, then the hypothesis fuzz
#               tests with FUZZ_EXAMPLES examples each, stopped after FUZZ_HYPOTHESIS_SECONDS
#               (not part of make test; make test runs each atheris target on its seeds only)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.wgpy-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DEB_PACKAGES := wireguard-go wireguard-tools iperf3 iputils-ping ncat iptables iproute2 \
	libssl-dev libsodium-dev python3-venv python3-dev gcc containernetworking-plugins \
	prometheus tmux systemd etcd-server etcd-client

.PHONY: all deps venv build lint test fuzz demo bench soak clean clean-netns distclean

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

# Coverage-guided fuzzing: each atheris target (fuzz/*.py, one per parser of outside input) runs
# for FUZZ_SECONDS (libFuzzer -max_total_time); its corpus grows in .fuzz/corpus/TARGET and a
# crash lands in .fuzz/crashes/ and stops the run. FUZZ_TARGETS picks a subset. Then every
# hypothesis fuzz test (tests/fuzzing.py reads WGPY_FUZZ_EXAMPLES) with many more examples.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= wg_receive vxlan_engine uapi wg_quick vxlan_control mesh_record cni
FUZZ_EXAMPLES ?= 20000
FUZZ_HYPOTHESIS_SECONDS ?= 3600
FUZZ_TESTS := tests/test_twin_fuzz.py tests/test_decoder_fuzz.py tests/test_vxlan_fuzz.py tests/test_overlay_fuzz.py

fuzz: build
	for target in $(FUZZ_TARGETS); do \
		timeout --signal=INT --kill-after=60 $$(( $(FUZZ_SECONDS) + 120 )) \
			$(PY) -m fuzz.run $$target --seconds $(FUZZ_SECONDS) || exit 1; \
	done
	WGPY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) timeout --signal=INT --kill-after=60 $(FUZZ_HYPOTHESIS_SECONDS) \
		$(PY) -m pytest $(FUZZ_TESTS) -q --hypothesis-show-statistics

demo: build
	$(PY) -m tunnel.lab.demo

# The chart needs matplotlib (the optional "bench" extra). Contenders: upstream wireguard-go
# (WGGO_UPSTREAM, when that file exists) and Debian's, each labelled with its --version.
WGGO_UPSTREAM ?= ../shared/bin/wireguard-go-upstream
BENCH_WGGO := $(if $(wildcard $(WGGO_UPSTREAM)),--wireguard-go $(WGGO_UPSTREAM) \
	--wireguard-go $(shell command -v wireguard-go),)
bench: build
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[bench]'
	$(VENV)/bin/wg-py bench $(BENCH_WGGO) $(BENCH_ARGS)

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

# Namespaces (and their daemons, /etc/netns dirs, temp dirs) that test labs of killed runs left:
# only the default prefix wgpy<pid>x... of a pid that no longer exists (tunnel/lab/netns.py).
clean-netns: venv
	$(PY) -m tunnel.lab.netns sweep

distclean: clean
	rm -rf $(VENV)

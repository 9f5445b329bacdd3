# cachelayer development tasks. `make help` lists them; docs/development.md explains them.
#
# Works on a fresh Debian machine with only python3 and root: `make test` installs the Debian
# packages it needs, builds .venv, starts the dev stack (scripts/devstack) and runs the checks.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Steps of `make test` must run in order even under `make -j`.
.NOTPARALLEL:

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
EXTRAS      ?= dev,service,bench,msgpack,prometheus,otel
# pip re-runs only when pyproject.toml is newer than this file.
STAMP       := $(VENV)/.cachelayer-installed
PYTEST_ARGS ?=
# Only the directories that exist (git does not keep empty ones).
LINT_PATHS  := $(wildcard cachelayer service tests benchmarks harness docs/_hooks.py docs/_metrics_table.py)
DEVSTACK    := scripts/devstack
# What `make run` runs: the wallpaper service on :8888 with demo data (examples/demo.py is the library demo).
RUN_CMD     ?= $(PY) -m service dev

# Debian packages, as "command:package"; a package is installed only if its command is missing.
SYSTEM_DEPS := redis-server:redis-server redis-cli:redis-tools mariadbd:mariadb-server h2load:nghttp2-client \
               mariadb:mariadb-client wrk:wrk ab:apache2-utils zstd:zstd chromium:chromium promtool:prometheus \
               valgrind:valgrind
# Packages installed for their commands only, whose daemon must not run: Debian's prometheus starts a Prometheus
# server (:9090) at install and at every boot; we want its promtool (`make promtool-check`). While apt-get installs
# one of them, a policy-rc.d of ours refuses to start it (it alone; written only when the machine has no
# policy-rc.d, whose own policy then applies; removed right after); then it is disabled at boot and, if it was
# started anyway, stopped: its systemd unit, or the PID in its init script's PID file. Nothing else is touched.
NO_DAEMON   := prometheus
POLICY_RC_D := /usr/sbin/policy-rc.d
define NO_DAEMON_POLICY
#!/bin/sh
# Written by cachelayer's `make system-deps` for one apt-get install, removed after it: $(NO_DAEMON) may not start.
case " $(NO_DAEMON) " in *" $${1%.service} "*) exit 101 ;; esac
exit 0
endef
export NO_DAEMON_POLICY
# Shell, in system-deps before apt-get install: $$nodaemon = the NO_DAEMON packages in $$missing.
NO_DAEMON_BEFORE = nodaemon=""; ourpolicy=""; \
	for pkg in $$missing; do case " $(NO_DAEMON) " in *" $$pkg "*) nodaemon="$$nodaemon $$pkg" ;; esac; done; \
	if [ -n "$$nodaemon" ] && [ ! -e $(POLICY_RC_D) ]; then \
	  trap '$(SUDO) rm -f $(POLICY_RC_D)' EXIT; ourpolicy=1; \
	  printf '%s\n' "$$NO_DAEMON_POLICY" | $(SUDO) tee $(POLICY_RC_D) >/dev/null; \
	  $(SUDO) chmod 755 $(POLICY_RC_D); \
	fi
# Shell, after apt-get install: our policy-rc.d goes; each NO_DAEMON package installed is disabled, and stopped.
NO_DAEMON_AFTER = if [ -n "$$ourpolicy" ]; then $(SUDO) rm -f $(POLICY_RC_D); trap - EXIT; fi; \
	for pkg in $$nodaemon; do \
	  if [ -d /run/systemd/system ]; then \
	    $(SUDO) systemctl disable --now "$$pkg.service" >/dev/null 2>&1 || true; \
	  else \
	    $(SUDO) update-rc.d "$$pkg" disable >/dev/null 2>&1 || true; \
	    $(SUDO) env DPKG_MAINTSCRIPT_PACKAGE="$$pkg" deb-systemd-helper disable "$$pkg.service" >/dev/null 2>&1 || true; \
	    pid="$$(cat "/run/$$pkg/$$pkg.pid" 2>/dev/null || true)"; \
	    if [ -n "$$pid" ] && [ "$$(cat "/proc/$$pid/comm" 2>/dev/null || true)" = "$$pkg" ]; then \
	      $(SUDO) kill "$$pid"; \
	    fi; \
	  fi; \
	  echo "system-deps: $$pkg installed for its commands; its daemon is not running, nor started at boot"; \
	done
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Another apt-get/dpkg (unattended-upgrades, a colleague's install) may hold the package locks: wait for them up to
# APT_LOCK_WAIT seconds instead of failing. apt-get waits for the dpkg lock itself (DPkg::Lock::Timeout); the
# lists lock of `apt-get update` it does not wait for, so we poll every lock first (APT_LOCKS_FREE).
APT_LOCK_WAIT  ?= 600
APT_LOCK_FILES ?= /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock
APT_GET        := $(SUDO) apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT)
# Exit 0 when no process holds any of the lock files (argv). F_GETLK asks without taking the lock, so the check
# never blocks the apt-get it waits for; python3 is all `make test` needs before .venv exists.
define APT_LOCKS_FREE
import fcntl, os, struct, sys
def held(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        probe = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        return struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)
sys.exit(1 if any(held(p) for p in sys.argv[1:]) else 0)
endef
export APT_LOCKS_FREE
# Shell: wait until no package lock is held, at most APT_LOCK_WAIT seconds (then fail).
WAIT_FOR_APT_LOCKS = waited=0; \
	until $(PYTHON) -c "$$APT_LOCKS_FREE" $(APT_LOCK_FILES); do \
	  if [ "$$waited" -ge "$(APT_LOCK_WAIT)" ]; then \
	    echo "apt-lock-wait: a package lock is still held after $(APT_LOCK_WAIT) s; giving up" >&2; exit 1; \
	  fi; \
	  [ "$$waited" -gt 0 ] || echo "apt-lock-wait: another apt-get/dpkg holds a package lock; waiting (up to $(APT_LOCK_WAIT) s)"; \
	  sleep 2; waited=$$((waited + 2)); \
	done

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: help test system-deps apt-lock-wait venv up down status lint typecheck pytest run bench-codecs clean

help:
	@echo "make test          system packages, .venv, dev stack, ruff, mypy --strict, pytest (PYTEST_ARGS=...)"
	@echo "make run           .venv + dev stack, then: $(RUN_CMD)"
	@echo "make up|down|status  start / stop (only what devstack started) / show the dev stack"
	@echo "make lint          ruff check $(LINT_PATHS)"
	@echo "make typecheck     mypy --strict cachelayer service benchmarks harness docs/_hooks.py docs/_metrics_table.py"
	@echo "make promtool-check  promtool check rules + promtool test rules on $(PROM_RULES)"
	@echo "make bench-codecs  quick codec benchmark"
	@echo "make docs          build the docs site into site/ (mkdocs, strict: a broken link or reference fails)"
	@echo "make clean         remove the .venv install stamp and var/ data of stopped services"

test: system-deps venv up lint typecheck promtool-check pytest

# (a) Debian packages whose commands are missing; `apt-get update` once, only if needed.
system-deps:
	@missing=""; \
	for pair in $(SYSTEM_DEPS); do \
	  cmd="$${pair%%:*}"; pkg="$${pair#*:}"; \
	  if ! command -v "$$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$$cmd" ]; then missing="$$missing $$pkg"; fi; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "system-deps: installing$$missing"; \
	  $(WAIT_FOR_APT_LOCKS); \
	  until $(APT_GET) update -q; do \
	    $(PYTHON) -c "$$APT_LOCKS_FREE" $(APT_LOCK_FILES) && exit 1; \
	    $(WAIT_FOR_APT_LOCKS); \
	  done; \
	  $(NO_DAEMON_BEFORE); \
	  DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q --no-install-recommends $$missing; \
	  $(NO_DAEMON_AFTER); \
	else \
	  echo "system-deps: all present"; \
	fi

# Wait (up to APT_LOCK_WAIT s) until no other apt-get/dpkg holds a package lock. `apt-get update` above retries
# only when it failed while a lock was held (lost the race to another apt-get); any other failure stops the build.
apt-lock-wait:
	@$(WAIT_FOR_APT_LOCKS)

# (b) the virtualenv; pip runs again only when pyproject.toml changed since the last install. The editable install
# holds cachelayer only (plus the extras' dependencies): service, benchmarks and harness run from this directory.
venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# (c) the dev stack: Redis, MariaDB, SecantusDB (see scripts/devstack).
up: venv
	$(PY) $(DEVSTACK) up

down:
	$(PYTHON) $(DEVSTACK) down

status:
	@$(PYTHON) $(DEVSTACK) status

# (d) lint
lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)

# (e) types
typecheck: venv
	$(VENV)/bin/mypy --strict cachelayer service benchmarks harness docs/_hooks.py docs/_metrics_table.py

# (e') Prometheus alert and recording rules (deploy/prometheus): their syntax, then their unit tests (each alert
# fired by one test and kept quiet by another). promtool comes from Debian's prometheus package (system-deps).
PROMTOOL    ?= promtool
PROM_RULES  := deploy/prometheus
.PHONY: promtool-check
promtool-check:
	@command -v $(PROMTOOL) >/dev/null || { echo "promtool-check: no $(PROMTOOL); run make system-deps" >&2; exit 1; }
	$(PROMTOOL) check rules $(PROM_RULES)/rules.yml
	$(PROMTOOL) test rules $(PROM_RULES)/rules_test.yml

# (f) tests
pytest: venv
	$(PY) -m pytest $(PYTEST_ARGS)

run: venv up
	$(RUN_CMD)

bench-codecs: venv
	$(PY) -m benchmarks.codecs --quick

# The docs site (mkdocs.yml; the docs extra): README, docs/*.md, the API reference from the docstrings, the
# metrics tables generated from the code, the benchmark plots. Strict: any warning fails. CI builds it in
# tests/test_docs_site.py.
.PHONY: docs
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -f $(STAMP)
	$(PYTHON) $(DEVSTACK) clean

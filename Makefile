# kiln: bake Kubernetes node images. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
KILN := $(VENV)/bin/kiln
PYTEST := $(VENV)/bin/pytest
# apt packages kiln drives; make deps installs them (as root, or with sudo)
APT_PACKAGES := packer qemu-system-x86 qemu-utils ovmf xorriso genisoimage mtools dosfstools fdisk gdisk \
  e2fsprogs mmdebstrap grub-pc-bin grub-efi-amd64-bin openssh-client openssl ca-certificates
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

##@ Setup
.PHONY: deps deps-apt deps-python
deps: deps-apt deps-python ## Install apt packages and the virtualenv (.venv) with kiln and its test tools

deps-apt: .deps-apt.stamp ## Install the apt packages kiln drives (packer, qemu, mmdebstrap, ...)
.deps-apt.stamp:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

deps-python: $(VENV)/.stamp ## Create .venv and install kiln (editable) with its test extras
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

##@ Tests
.PHONY: test test-unit test-vm lint
test: deps ## Run every test, VM builds and GCS servers included (what CI runs)
	$(PYTEST) -v --durations=25

test-unit: deps ## Run the fast tests only (no VM)
	$(PYTEST) -m 'not vm'

test-vm: deps ## Run only the VM tests (build, boot, verify)
	$(PYTEST) -v -m vm

lint: deps-python ## ruff (lint + format check) and mypy on src/
	$(VENV)/bin/ruff check src tests bench hack
	$(VENV)/bin/ruff format --check src tests bench hack
	$(VENV)/bin/mypy

##@ Housekeeping
.PHONY: clean help
clean: ## Remove build outputs, caches and rendered templates (keeps .venv)
	rm -rf packer/output packer/.rendered .cache/kiln cloudinit/cidata.iso .pytest_cache

help: ## List every target
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make TARGET [PACKER_VAR_FILES=...] [PACKER_FLAGS=...] [FOREGROUND=1] [DEBUG=1]\n"} \
	  /^##@/ {printf "\n%s\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_.-]+:.*##/ {printf "  %-28s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

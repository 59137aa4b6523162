# kiln: bake Kubernetes node images. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
KILN := $(VENV)/bin/kiln
# exec: the SIGTERM make passes on reaches pytest, not a shell in between (see KILN_ENV)
PYTEST := exec $(VENV)/bin/pytest
# apt packages kiln drives (and apt-cacher-ng, the package cache the tests build through); make deps installs
# them (as root, or with sudo)
APT_PACKAGES := packer qemu-system-x86 qemu-utils ovmf xorriso mtools dosfstools fdisk \
  e2fsprogs mmdebstrap grub-pc-bin grub-efi-amd64-bin grub-common squashfs-tools ipxe-qemu openssh-client \
  openssl ca-certificates git zsh zstd util-linux apt-cacher-ng
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

##@ Images (targets are written out so that tab completion shows them; see `kiln list`)
# PACKER_VAR_FILES: space-separated JSON/.pkrvars.hcl files layered over config/ (kiln reads the variable).
# PACKER_FLAGS: `-var key=value` pairs. FOREGROUND=1 shows the VM console, DEBUG=1 adds Packer's own log.
KILN_FLAGS = $(if $(filter 1,$(FOREGROUND)),--foreground) $(if $(filter 1,$(DEBUG)),--debug) $(PACKER_FLAGS) \
  $(if $(filter 1,$(K8S_STANDIN)),--var-file {varfile}) \
  $(foreach v,$(KUBERNETES_VERSIONS),--kubernetes-version $(v)) $(if $(filter 1,$(FORCE)),--force) \
  $(if $(FORMATS),--var "formats=$(FORMATS)")
# `exec`: the recipe's shell becomes kiln (or K8S_STANDIN's wrapper, which passes signals on), so the SIGTERM
# that make sends its child when make itself is stopped reaches kiln. make passes SIGTERM to its children
# only; a shell left in between would die and leave kiln building. (bash already execs a lone command; the
# `exec` keeps it so whatever the recipe's shell.)
KILN_ENV = exec env PACKER_VAR_FILES="$(PACKER_VAR_FILES)" $(K8S_STANDIN_WRAP)
# K8S_STANDIN=1: offline builds. Serves TEST FIXTURE stand-ins for kubelet/kubeadm/kubectl and crictl, and the
# host Debian's real containerd and runc repackaged as their release downloads (all with sha256s), over local
# HTTP for the duration of the command, and selects them (the http sources) through a var file.
K8S_STANDIN_VERSION ?= $(shell PACKER_VAR_FILES="$(PACKER_VAR_FILES)" $(KILN) config debian-12 --get kubernetes_semver)
# K8S_STANDIN_PORT: the stand-in's host port (default 0: any free one). The download URLs carry it into the
# SBOM, so two builds that should be the same bytes give the same port.
K8S_STANDIN_PORT ?= 0
K8S_STANDIN_WRAP = $(if $(filter 1,$(K8S_STANDIN)),$(VENV)/bin/python hack/k8s_standin.py run \
  --port $(K8S_STANDIN_PORT) $(foreach v,$(or $(KUBERNETES_VERSIONS),$(K8S_STANDIN_VERSION)),--version $(v)) --)
.PHONY: build-centos-7 \
  build-qemu-centos-7 \
  build-ova-centos-7 \
  validate-centos-7 \
  build-debian-12 \
  build-qemu-debian-12 \
  validate-debian-12 \
  build-debian-12-cloudimg \
  build-qemu-debian-12-cloudimg \
  validate-debian-12-cloudimg \
  build-debian-13 \
  build-qemu-debian-13 \
  validate-debian-13 \
  build-rockylinux-9 \
  build-qemu-rockylinux-9 \
  build-ova-rockylinux-9 \
  validate-rockylinux-9 \
  build-ubuntu-1804 \
  build-qemu-ubuntu-1804 \
  build-ova-ubuntu-1804 \
  validate-ubuntu-1804 \
  build-ubuntu-2004 \
  build-qemu-ubuntu-2004 \
  build-ova-ubuntu-2004 \
  validate-ubuntu-2004 \
  build-ubuntu-2204 \
  build-qemu-ubuntu-2204 \
  build-ova-ubuntu-2204 \
  validate-ubuntu-2204 \
  build-ubuntu-2404 \
  build-qemu-ubuntu-2404 \
  build-ova-ubuntu-2404 \
  validate-ubuntu-2404 \
  build-ubuntu-2404-cloudimg \
  build-qemu-ubuntu-2404-cloudimg \
  validate-ubuntu-2404-cloudimg \
  validate-all
build-centos-7: deps ## Build centos-7 with its default builder (vmware-iso)
	$(KILN_ENV) $(KILN) build centos-7 $(KILN_FLAGS)
build-qemu-centos-7: deps ## Build centos-7 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build centos-7 --only qemu $(KILN_FLAGS)
build-ova-centos-7: deps ## Build centos-7 with the vmware-iso builder (the OVA path)
	$(KILN_ENV) $(KILN) build centos-7 --only vmware-iso $(KILN_FLAGS)
validate-centos-7: deps ## Render centos-7 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate centos-7 $(PACKER_FLAGS)
build-debian-12: deps ## Build debian-12 with its default builder (qemu)
	$(KILN_ENV) $(KILN) build debian-12 $(KILN_FLAGS)
build-qemu-debian-12: deps ## Build debian-12 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build debian-12 --only qemu $(KILN_FLAGS)
validate-debian-12: deps ## Render debian-12 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate debian-12 $(PACKER_FLAGS)
build-debian-12-cloudimg: deps ## Build debian-12-cloudimg (Debian's generic cloud image) with its default builder (qemu)
	$(KILN_ENV) $(KILN) build debian-12-cloudimg $(KILN_FLAGS)
build-qemu-debian-12-cloudimg: deps ## Build debian-12-cloudimg with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build debian-12-cloudimg --only qemu $(KILN_FLAGS)
validate-debian-12-cloudimg: deps ## Render debian-12-cloudimg and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate debian-12-cloudimg $(PACKER_FLAGS)
build-debian-13: deps ## Build debian-13 with its default builder (qemu)
	$(KILN_ENV) $(KILN) build debian-13 $(KILN_FLAGS)
build-qemu-debian-13: deps ## Build debian-13 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build debian-13 --only qemu $(KILN_FLAGS)
validate-debian-13: deps ## Render debian-13 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate debian-13 $(PACKER_FLAGS)
build-rockylinux-9: deps ## Build rockylinux-9 with its default builder (vmware-iso)
	$(KILN_ENV) $(KILN) build rockylinux-9 $(KILN_FLAGS)
build-qemu-rockylinux-9: deps ## Build rockylinux-9 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build rockylinux-9 --only qemu $(KILN_FLAGS)
build-ova-rockylinux-9: deps ## Build rockylinux-9 with the vmware-iso builder (the OVA path)
	$(KILN_ENV) $(KILN) build rockylinux-9 --only vmware-iso $(KILN_FLAGS)
validate-rockylinux-9: deps ## Render rockylinux-9 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate rockylinux-9 $(PACKER_FLAGS)
build-ubuntu-1804: deps ## Build ubuntu-1804 with its default builder (vmware-iso)
	$(KILN_ENV) $(KILN) build ubuntu-1804 $(KILN_FLAGS)
build-qemu-ubuntu-1804: deps ## Build ubuntu-1804 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build ubuntu-1804 --only qemu $(KILN_FLAGS)
build-ova-ubuntu-1804: deps ## Build ubuntu-1804 with the vmware-iso builder (the OVA path)
	$(KILN_ENV) $(KILN) build ubuntu-1804 --only vmware-iso $(KILN_FLAGS)
validate-ubuntu-1804: deps ## Render ubuntu-1804 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate ubuntu-1804 $(PACKER_FLAGS)
build-ubuntu-2004: deps ## Build ubuntu-2004 with its default builder (vmware-iso)
	$(KILN_ENV) $(KILN) build ubuntu-2004 $(KILN_FLAGS)
build-qemu-ubuntu-2004: deps ## Build ubuntu-2004 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build ubuntu-2004 --only qemu $(KILN_FLAGS)
build-ova-ubuntu-2004: deps ## Build ubuntu-2004 with the vmware-iso builder (the OVA path)
	$(KILN_ENV) $(KILN) build ubuntu-2004 --only vmware-iso $(KILN_FLAGS)
validate-ubuntu-2004: deps ## Render ubuntu-2004 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate ubuntu-2004 $(PACKER_FLAGS)
build-ubuntu-2204: deps ## Build ubuntu-2204 with its default builder (vmware-iso)
	$(KILN_ENV) $(KILN) build ubuntu-2204 $(KILN_FLAGS)
build-qemu-ubuntu-2204: deps ## Build ubuntu-2204 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build ubuntu-2204 --only qemu $(KILN_FLAGS)
build-ova-ubuntu-2204: deps ## Build ubuntu-2204 with the vmware-iso builder (the OVA path)
	$(KILN_ENV) $(KILN) build ubuntu-2204 --only vmware-iso $(KILN_FLAGS)
validate-ubuntu-2204: deps ## Render ubuntu-2204 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate ubuntu-2204 $(PACKER_FLAGS)
build-ubuntu-2404: deps ## Build ubuntu-2404 with its default builder (vmware-iso)
	$(KILN_ENV) $(KILN) build ubuntu-2404 $(KILN_FLAGS)
build-qemu-ubuntu-2404: deps ## Build ubuntu-2404 with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build ubuntu-2404 --only qemu $(KILN_FLAGS)
build-ova-ubuntu-2404: deps ## Build ubuntu-2404 with the vmware-iso builder (the OVA path)
	$(KILN_ENV) $(KILN) build ubuntu-2404 --only vmware-iso $(KILN_FLAGS)
validate-ubuntu-2404: deps ## Render ubuntu-2404 and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate ubuntu-2404 $(PACKER_FLAGS)
build-ubuntu-2404-cloudimg: deps ## Build ubuntu-2404-cloudimg with its default builder (qemu)
	$(KILN_ENV) $(KILN) build ubuntu-2404-cloudimg $(KILN_FLAGS)
build-qemu-ubuntu-2404-cloudimg: deps ## Build ubuntu-2404-cloudimg with the qemu builder (qcow2)
	$(KILN_ENV) $(KILN) build ubuntu-2404-cloudimg --only qemu $(KILN_FLAGS)
validate-ubuntu-2404-cloudimg: deps ## Render ubuntu-2404-cloudimg and run the real packer validate on it
	$(KILN_ENV) $(KILN) validate ubuntu-2404-cloudimg $(PACKER_FLAGS)
validate-all: deps ## Render and packer-validate every target
	$(KILN_ENV) $(KILN) validate --all $(PACKER_FLAGS)
# A target of your own (config/NAME.json): the same targets, by pattern. The written-out ones above win; these
# only lack tab completion. An unknown NAME is kiln's error (exit 2), which lists the known targets.
build-qemu-%: deps
	$(KILN_ENV) $(KILN) build $* --only qemu $(KILN_FLAGS)
build-ova-%: deps
	$(KILN_ENV) $(KILN) build $* --only vmware-iso $(KILN_FLAGS)
build-%: deps
	$(KILN_ENV) $(KILN) build $* $(KILN_FLAGS)
validate-%: deps
	$(KILN_ENV) $(KILN) validate $* $(PACKER_FLAGS)

##@ Release (CI release jobs; every step works the same on a laptop)
# GCS_BUCKET, KEY_FILE (else ADC), KUBERNETES_VERSIONS="v1.34.2 v1.35.1", RELEASE_FLAGS="--ci|--release --plan --json"
RELEASE_ARGS = $(if $(GCS_BUCKET),--bucket $(GCS_BUCKET)) $(if $(KEY_FILE),--key-file $(KEY_FILE)) \
  $(foreach v,$(KUBERNETES_VERSIONS),--kubernetes-version $(v)) $(RELEASE_FLAGS) $(PACKER_FLAGS) \
  $(if $(filter 1,$(K8S_STANDIN)),--var-file {varfile})
.PHONY: release-all \
  release-centos-7 \
  release-debian-12 \
  release-debian-12-cloudimg \
  release-debian-13 \
  release-rockylinux-9 \
  release-ubuntu-1804 \
  release-ubuntu-2004 \
  release-ubuntu-2204 \
  release-ubuntu-2404 \
  release-ubuntu-2404-cloudimg
release-centos-7: deps ## Build (if needed), verify and publish centos-7 to GCS unless already published
	$(KILN_ENV) $(KILN) release centos-7 $(RELEASE_ARGS)
release-debian-12: deps ## Build (if needed), verify and publish debian-12 to GCS unless already published
	$(KILN_ENV) $(KILN) release debian-12 $(RELEASE_ARGS)
release-debian-12-cloudimg: deps ## Build (if needed), verify and publish debian-12-cloudimg to GCS unless already published
	$(KILN_ENV) $(KILN) release debian-12-cloudimg $(RELEASE_ARGS)
release-debian-13: deps ## Build (if needed), verify and publish debian-13 to GCS unless already published
	$(KILN_ENV) $(KILN) release debian-13 $(RELEASE_ARGS)
release-rockylinux-9: deps ## Build (if needed), verify and publish rockylinux-9 to GCS unless already published
	$(KILN_ENV) $(KILN) release rockylinux-9 $(RELEASE_ARGS)
release-ubuntu-1804: deps ## Build (if needed), verify and publish ubuntu-1804 to GCS unless already published
	$(KILN_ENV) $(KILN) release ubuntu-1804 $(RELEASE_ARGS)
release-ubuntu-2004: deps ## Build (if needed), verify and publish ubuntu-2004 to GCS unless already published
	$(KILN_ENV) $(KILN) release ubuntu-2004 $(RELEASE_ARGS)
release-ubuntu-2204: deps ## Build (if needed), verify and publish ubuntu-2204 to GCS unless already published
	$(KILN_ENV) $(KILN) release ubuntu-2204 $(RELEASE_ARGS)
release-ubuntu-2404: deps ## Build (if needed), verify and publish ubuntu-2404 to GCS unless already published
	$(KILN_ENV) $(KILN) release ubuntu-2404 $(RELEASE_ARGS)
release-ubuntu-2404-cloudimg: deps ## Build (if needed), verify and publish ubuntu-2404-cloudimg to GCS unless already published
	$(KILN_ENV) $(KILN) release ubuntu-2404-cloudimg $(RELEASE_ARGS)
release-%: deps
	$(KILN_ENV) $(KILN) release $* $(RELEASE_ARGS)
release-all: deps ## Release every target that builds on this machine kind (debian-12, debian-13)
	$(KILN_ENV) $(KILN) release debian-12 debian-13 $(RELEASE_ARGS)

##@ Tests
.PHONY: test test-unit test-vm test-vm-more test-vm-runner test-cloudimg test-apt-cache test-repro-cold test-overlay test-soak test-debian-13 lint
# the long VM tests, each with a target of its own; `make test` (CI) runs none of them
LONG_VM_TESTS = vm_runner or cloudimg or repro_cold or apt_cache or overlay or soak or debian13
test: deps lint ## Lint, then the suite CI runs: unit, GCS, the shared image's build and its boots (BIOS, UEFI, OVA, live ISO, netboot), verify, bump, kill -9 (not vm_more)
	$(PYTEST) -v --durations=40 -m 'not ($(LONG_VM_TESTS)) and not vm_more'

test-vm-more: deps ## Beside the shared image: per-host ISOs and netboot, a SIGTERM'd chroot stage and the build after it (~7 min)
	$(PYTEST) -v --durations=20 -m 'vm_more'

test-vm-runner: deps ## Build and verify debian-12 with the VM runner too; the same package list and checks as the chroot-built image (~13 min beside an existing suite image)
	$(PYTEST) -v -m vm_runner

test-cloudimg: deps ## Build debian-12-cloudimg end to end from a locally served cloud image, boot it on BIOS and UEFI (~16 min)
	$(PYTEST) -v -m cloudimg

test-debian-13: deps ## Build debian-13 (trixie: systemd-networkd, not ifupdown) with the chroot runner, verify it and boot it again: its network and name server (~6 min)
	$(PYTEST) -v -m debian13

test-apt-cache: deps ## Build debian-12 twice through a real apt-cacher-ng: cache hits, no cache setting left, kiln diff of one extra package (~10 min)
	$(PYTEST) -v -s -m apt_cache

test-repro-cold: deps ## Build debian-12 twice from empty caches and check the artifacts are the same bytes (~20 min)
	$(PYTEST) -v -s -m repro_cold

test-overlay: deps ## Build debian-12 for two Kubernetes versions as one base + two overlays, boot each stacked ISO and one netboot set (~25 min)
	$(PYTEST) -v -s -m overlay

test-soak: deps ## Stop real builds with SIGINT, SIGTERM or SIGKILL at random moments; nothing left, the next build succeeds (~13 min; KILN_SOAK_SEED, KILN_SOAK_ROUNDS)
	$(PYTEST) -v -s -m soak

test-unit: deps ## Run the fast tests only (no VM)
	$(PYTEST) -m 'not vm'

test-vm: deps ## Run the VM tests of make test and test-vm-more (build, every boot, verify)
	$(PYTEST) -v -m 'vm and not ($(LONG_VM_TESTS))'

.PHONY: test-gcs bench-upload
test-gcs: deps-python ## Run the GCS tests only (upload, faults, images ls/get; they start their own servers)
	$(PYTEST) -v -m gcs

BENCH_SIZE_MIB ?= 512
bench-upload: deps-python ## Benchmark the uploader vs openssl and gsutil cp (BENCH_SIZE_MIB=512)
	$(VENV)/bin/python bench/upload.py --size-mib $(BENCH_SIZE_MIB)

lint: deps-python ## ruff (lint + format check), mypy on src/, the CI definitions against their schemas
	$(VENV)/bin/ruff check src tests bench hack
	$(VENV)/bin/ruff format --check src tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.cloudbuild cloudbuild.yaml
	$(VENV)/bin/actionlint .github/workflows/*.yml

##@ Housekeeping
.PHONY: clean help generate
generate: deps-python ## Regenerate what comes from the settings table: docs/settings.md, docs/image-builder.md, src/kiln/config/typed.py
	$(VENV)/bin/python hack/generate.py

clean: ## Remove build outputs, caches and rendered templates (keeps .venv)
	rm -rf packer/output packer/.rendered .cache/kiln cloudinit/cidata.iso .pytest_cache

help: ## List every target
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make TARGET [PACKER_VAR_FILES=...] [PACKER_FLAGS=...] [FOREGROUND=1] [DEBUG=1]\n"} \
	  /^##@/ {printf "\n%s\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_.-]+:.*##/ {printf "  %-28s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

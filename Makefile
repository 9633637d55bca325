# One entry point for set-up, tests and the demo. Everything built or downloaded lands in $(DATAMOVER_CACHE)
# (outside git) or .venv, and is rebuilt only when its pins change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DATAMOVER_CACHE ?= $(HOME)/.cache/datamover
PYTEST_ARGS ?=

.PHONY: venv host-packages binaries image ground test unit lint demo e2e clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# Pinned Go-built test binaries (kube-apiserver, kube-controller-manager, etcd, minio, rclone, ...).
binaries:
	bash tools/build.sh

# The datamover image, built without a daemon into $(DATAMOVER_CACHE)/image/datamover-<version>.oci.tar (an OCI
# archive: `ctr images import` or `docker load` it). Needs root (debootstrap and chroot); see docs/install.md.
image: venv
	bash tools/host-packages.sh debootstrap
	$(BIN)/python tools/image/build.py

# Debian packages the image build and the real node use (debootstrap, iptables, nftables, libseccomp-dev).
host-packages:
	bash tools/host-packages.sh

ground: venv host-packages binaries image

# The whole suite on the real ground, in two pytest runs: the control-plane tier alone (one real node per host, and
# its timings are the cluster's), then the unit and engine-vs-MinIO integration tiers on two pytest-xdist workers
# (each starts its own servers). Both always run; the target fails if either failed (pytest's 5, "nothing
# collected", is no failure as long as one of the two ran something, so PYTEST_ARGS="-k ..." picks tests anywhere).
test: ground
	@test "$$(id -u)" = 0 || { echo "make test: needs root (the control-plane tier runs a real kubelet, containerd and runc)" >&2; exit 1; }
	@$(BIN)/pytest tests/controlplane $(PYTEST_ARGS); controlplane=$$?; \
	$(BIN)/pytest tests/unit tests/integration -n 2 $(PYTEST_ARGS); rest=$$?; \
	echo "make test: control-plane tier exit $$controlplane, unit and integration tiers exit $$rest"; \
	case "$$controlplane/$$rest" in 0/0|0/5|5/0) exit 0;; *) exit 1;; esac

# Fast tier only (moto, pure functions, chart rendering): needs only helm and kubeconform of the binaries.
unit: venv
	bash tools/build.sh helm kubeconform
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check operator tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports

# Everything end to end on the local ground (a real node, the chart installed with helm), one migration watched live
# and a second one aborted.
demo: ground
	@test "$$(id -u)" = 0 || { echo "make demo: needs root (the ground runs a real kubelet, containerd and runc)" >&2; exit 1; }
	$(BIN)/python -m tests.ground.demo $(DEMO_ARGS)

# The operator tests against a cluster of your own (e.g. kind; see docs/install.md). MinIO and the operator run
# on this machine: DATAMOVER_E2E_S3_HOST must be an address of it that the cluster's pods reach, and
# DATAMOVER_E2E_WORKER_IMAGE the datamover image loaded into the cluster.
E2E_TESTS ?= tests/controlplane/test_operator.py tests/controlplane/test_install.py
e2e: ground
	@test -n "$(KUBECONFIG)" || { echo "make e2e: set KUBECONFIG to the cluster's kubeconfig" >&2; exit 2; }
	DATAMOVER_E2E_KUBECONFIG="$(KUBECONFIG)" $(BIN)/pytest $(E2E_TESTS) -m "not node_runtime" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

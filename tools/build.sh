#!/usr/bin/env bash
# Builds the pinned test-ground binaries into $DATAMOVER_CACHE/bin (outside git).
#
# Each binary family has its own Go module under tools/<family>/ (go.mod + go.sum are the pins).
# A binary is rebuilt only when its stamp changes; the stamp hashes the module's go.mod and go.sum,
# `go version` and the binary's line in BINARIES below, so changing a pin, the toolchain or the
# build flags rebuilds exactly the binaries concerned.
#
# Azurite (the Azure Blob emulator) is an npm package, not a Go module: tools/azurite/package.json and its
# package-lock.json are its pins, installed with `npm ci` into $DATAMOVER_CACHE/azurite, with a launcher in bin/.
#
# Usage: bash tools/build.sh [name ...]     (no names: every binary)
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DATAMOVER_CACHE:-$HOME/.cache/datamover}"
BIN_DIR="$CACHE/bin"
STAMP_DIR="$CACHE/stamps"
LOG_DIR="$CACHE/build-logs"

KUBE_VERSION_LDFLAGS="-X k8s.io/component-base/version.gitVersion=v1.33.13 \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=33 \
-X k8s.io/component-base/version.gitTreeState=clean"

CONTAINERD_LDFLAGS="-X github.com/containerd/containerd/v2/version.Version=v2.1.9 \
-X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"

# One entry per binary: name | module directory under tools/ | package | extra -ldflags | options.
# Options (space-separated, optional): `cgo` builds with CGO_ENABLED=1 (default 0: static), `tags=a,b` sets build
# tags, `apt=p,q` names Debian packages the build needs (installed by tools/host-packages.sh).
# To add a binary (helm, kubeconform, ...), add a module under tools/ and one line here.
BINARIES=(
  "etcd|etcd|go.etcd.io/etcd/server/v3|"
  "minio|minio|github.com/minio/minio|"
  "rclone|rclone|github.com/rclone/rclone|"
  # A peer the data-plane benchmark measures us against (bench/engine_vs_rclone.py), not used by tests.
  "s5cmd|s5cmd|github.com/peak/s5cmd/v2|-X github.com/peak/s5cmd/v2/version.Version=v2.3.0"
  # Google Cloud Storage on the ground (JSON and XML APIs, resumable uploads), as MinIO is its S3.
  "fake-gcs-server|fake-gcs-server|github.com/fsouza/fake-gcs-server|-X main.version=v1.56.1"
  "kube-apiserver|kube|k8s.io/kubernetes/cmd/kube-apiserver|$KUBE_VERSION_LDFLAGS"
  "kube-controller-manager|kube|k8s.io/kubernetes/cmd/kube-controller-manager|$KUBE_VERSION_LDFLAGS"
  "helm|helm|helm.sh/helm/v3/cmd/helm|-X helm.sh/helm/v3/internal/version.version=v3.22.0 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
  "kubeconform|kubeconform|github.com/yannh/kubeconform/cmd/kubeconform|-X main.version=v0.8.0"
  # The ground's real node: kubelet and scheduler, containerd with its shim and ctr, runc, CNI plugins, pause.
  "kube-scheduler|kube|k8s.io/kubernetes/cmd/kube-scheduler|$KUBE_VERSION_LDFLAGS"
  "kubelet|kube|k8s.io/kubernetes/cmd/kubelet|$KUBE_VERSION_LDFLAGS"
  "containerd|containerd|github.com/containerd/containerd/v2/cmd/containerd|$CONTAINERD_LDFLAGS|tags=no_btrfs"
  "containerd-shim-runc-v2|containerd|github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2|$CONTAINERD_LDFLAGS"
  "ctr|containerd|github.com/containerd/containerd/v2/cmd/ctr|$CONTAINERD_LDFLAGS"
  "runc|runc|github.com/opencontainers/runc|-X main.version=1.3.7|cgo tags=seccomp apt=libseccomp-dev,pkg-config"
  "bridge|cni|github.com/containernetworking/plugins/plugins/main/bridge|"
  "host-local|cni|github.com/containernetworking/plugins/plugins/ipam/host-local|"
  "loopback|cni|github.com/containernetworking/plugins/plugins/main/loopback|"
  "pause|pause|github.com/datamover/datamover/tools/pause|"
)

command -v go >/dev/null || { echo "build.sh: the go command is not on PATH" >&2; exit 1; }
mkdir -p "$BIN_DIR" "$STAMP_DIR" "$LOG_DIR"
# Several checkouts (or engineers) may share one cache: one build at a time, the others wait and then find
# their binaries up to date.
exec 9>"$CACHE/build.lock"
flock 9
GO_VERSION="$(go version)"

wanted() {  # $1 = name, then the names asked for on the command line (none: all)
  local name="$1" w; shift
  [[ $# -eq 0 ]] && return 0
  for w in "$@"; do [[ "$w" == "$name" ]] && return 0; done
  return 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs_since() { local d=$(( $(now_ms) - $1 )); printf '%d.%01ds' $(( d / 1000 )) $(( d % 1000 / 100 )); }

stamp_of() {  # $1 = entry line, $2 = module dir
  # Our own sources count too (tools/pause); a module's tools.go only names what it pins.
  { cat "$2/go.mod" "$2/go.sum"; find "$2" -name '*.go' ! -name tools.go -print0 | sort -z | xargs -0r cat
    echo "$GO_VERSION"; echo "$1"; } | sha256sum | cut -d' ' -f1
}

failed=()
total_start=$(now_ms)
for entry in "${BINARIES[@]}"; do
  IFS='|' read -r name module pkg ldflags options <<<"$entry"
  wanted "$name" "$@" || continue
  mod_dir="$TOOLS_DIR/$module"
  out="$BIN_DIR/$name"
  stamp_file="$STAMP_DIR/$name"
  stamp="$(stamp_of "$entry" "$mod_dir")"
  if [[ -x "$out" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    echo "up to date: $name"
    continue
  fi
  cgo=0 tags=()
  for option in $options; do
    case "$option" in
      cgo) cgo=1 ;;
      tags=*) tags=(-tags "${option#tags=}") ;;
      apt=*) packages="${option#apt=}"; bash "$TOOLS_DIR/host-packages.sh" ${packages//,/ } ;;
    esac
  done
  echo "building: $name ($pkg, module tools/$module)"
  log="$LOG_DIR/$name.log"
  start=$(now_ms)
  if (cd "$mod_dir" && CGO_ENABLED=$cgo GOFLAGS=-mod=readonly go build -trimpath "${tags[@]}" \
        -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg") >"$log" 2>&1; then
    mv -f "$out.tmp" "$out"
    echo "$stamp" >"$stamp_file"
    echo "built: $name in $(secs_since "$start")"
  else
    rm -f "$out.tmp" "$stamp_file"
    echo "FAILED: $name after $(secs_since "$start"); last lines of $log:" >&2
    tail -n 30 "$log" >&2
    failed+=("$name")
  fi
done
# Azurite: npm ci of the locked tree (every package's integrity hash checked), rebuilt when the lock or node change.
if wanted azurite "$@"; then
  npm_dir="$CACHE/azurite"
  stamp="$( { cat "$TOOLS_DIR/azurite/package.json" "$TOOLS_DIR/azurite/package-lock.json"
              node --version 2>/dev/null; } | sha256sum | cut -d' ' -f1)"
  # No npm on the machine: Debian's npm package (it brings nodejs), as the Go builds get their apt packages.
  command -v npm >/dev/null || bash "$TOOLS_DIR/host-packages.sh" npm || true
  if [[ -x "$BIN_DIR/azurite-blob" && -f "$STAMP_DIR/azurite" && "$(cat "$STAMP_DIR/azurite")" == "$stamp" ]]; then
    echo "up to date: azurite"
  elif ! command -v npm >/dev/null; then
    echo "FAILED: azurite: the npm command is not on PATH (Debian: apt-get install npm)" >&2
    failed+=(azurite)
  else
    echo "installing: azurite (npm, tools/azurite)"
    start=$(now_ms)
    rm -rf "$npm_dir" "$STAMP_DIR/azurite"
    mkdir -p "$npm_dir"
    cp "$TOOLS_DIR/azurite/package.json" "$TOOLS_DIR/azurite/package-lock.json" "$npm_dir/"
    # No install scripts: Azurite runs without them (the one it pulls, protobufjs's, only prints a notice).
    if (cd "$npm_dir" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund) >"$LOG_DIR/azurite.log" 2>&1; then
      printf '#!/bin/sh\nexec node "%s/node_modules/azurite/dist/src/blob/main.js" "$@"\n' "$npm_dir" \
        >"$BIN_DIR/azurite-blob.tmp"
      chmod +x "$BIN_DIR/azurite-blob.tmp"
      mv -f "$BIN_DIR/azurite-blob.tmp" "$BIN_DIR/azurite-blob"
      echo "$stamp" >"$STAMP_DIR/azurite"
      echo "installed: azurite in $(secs_since "$start")"
    else
      echo "FAILED: azurite after $(secs_since "$start"); last lines of $LOG_DIR/azurite.log:" >&2
      tail -n 30 "$LOG_DIR/azurite.log" >&2
      failed+=(azurite)
    fi
  fi
fi

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "build.sh: FAILED to build: ${failed[*]} (logs in $LOG_DIR)" >&2
  exit 1
fi
echo "build.sh: done in $(secs_since "$total_start"); binaries in $BIN_DIR"

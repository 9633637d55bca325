#!/usr/bin/env bash
# Installs the Debian packages the image build and the real node need on the build machine (idempotent).
#
# debootstrap makes the image's base; libseccomp-dev lets runc be built with seccomp (pods ask for RuntimeDefault);
# iptables is what the kubelet and the ground's Service DNAT rule use, and nft removes an iptables-nft table the ground
# created (iptables itself cannot delete a table). A package already installed costs nothing;
# apt-get runs only when one is missing, and then needs root.
#
# Usage: bash tools/host-packages.sh [package ...]     (no names: all of them)
set -euo pipefail

ALL=(debootstrap libseccomp-dev pkg-config iptables nftables)
wanted=("$@")
[[ ${#wanted[@]} -eq 0 ]] && wanted=("${ALL[@]}")

missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  echo "host-packages.sh: missing Debian packages ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "host-packages.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another build may hold dpkg's lock (two checkouts on one machine): apt waits for it rather than failing.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Installs what building and testing husk needs on a fresh Debian machine of this kind.
# Idempotent and quick when everything is there: apt runs only for missing packages.
set -euo pipefail

# Debian packages: engines the end-to-end suites drive, peers the benchmarks compare,
# and the C libraries the crates link.
packages=(
  docker.io containerd runc crun podman   # real engines and peer runtimes
  busybox-static                          # test and demo rootfs
  bsdutils                                # script(1): a real terminal for TTY tests
  procps iproute2 tar
  libseccomp-dev pkg-config               # libseccomp for seccomp filters
  libcap-ng-dev                           # virtiofsd (cargo install) links it
  qemu-system-x86 cpio                    # the qemu backend, initramfs, nested KVM host
  linux-source-6.12 flex bison bc libelf-dev  # the guest kernel build
)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Docker's packaging may start daemons on install; the suites start their own.
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi
# vm isolation's vhost-user helpers, built from crates.io into the cache outside the
# clone (the qemu backend, the boot test and the vm suite look there first).
cache="${HUSK_CACHE:-$HOME/.cache/husk}"
mkdir -p "$cache"
install_tool() {
  local name=$1 version=$2
  if [ ! -x "$cache/bin/$name" ]; then
    echo "setup: cargo install $name $version into $cache/bin"
    cargo install --locked --quiet "$name" --version "$version" --root "$cache"
  fi
}
install_tool vhost-device-vsock 0.3.0
install_tool virtiofsd 1.14.0
echo "setup: ok"

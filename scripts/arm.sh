#!/usr/bin/env bash
# Install (Debian packages, first time only) the aarch64 cross compiler and qemu's user-mode
# emulator, so the ternary kernel's ARM paths (NEON, NEON dotprod) are compiled and run under
# emulation by the tests (tests/model/kernels: the C harness under qemu-aarch64). Idempotent.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  echo "arm: installing ${need[*]} (apt-get)" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >&2
fi

#!/usr/bin/env bash
# Make sure qemu-x86_64-static is here (Debian's qemu-user-static; needs root to install) and print its path.
# `qemu-x86_64-static -cpu Haswell python ...` runs a program on an emulated AVX2 CPU without AVX-512 or VNNI
# (QEMU 7.2's TCG), on any x86-64 host: what ONNX Runtime's INT8 kernels do on such a CPU, reproduced.
set -euo pipefail
if ! command -v qemu-x86_64-static >/dev/null; then
    echo "[qemu_x86] installing qemu-user-static" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static >&2
fi
command -v qemu-x86_64-static

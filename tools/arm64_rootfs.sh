#!/usr/bin/env bash
# Build, once, an arm64 Debian trixie root filesystem with Python 3.13, numpy, onnxruntime, ai-edge-litert
# and executorch-numpy-runtime, to run edgekit artifacts (and edgekit/device/runner.py) on emulated arm64:
#
#   $CACHE/arm64/python3 edgekit/device/runner.py MODEL ...
#   (= QEMU_CPU=cortex-a76 qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3 ...)
#
# Every step is cached under ${EDGEKIT_CACHE:-~/.cache/edgekit}/arm64 and skipped when done, so a
# second run only verifies. Needs root for apt-get (only when debootstrap/qemu-user-static are missing).
# The last line printed on stdout is the root filesystem's path.
set -euo pipefail

CACHE=${EDGEKIT_CACHE:-$HOME/.cache/edgekit}/arm64
ROOTFS=$CACHE/rootfs
WHEELS=$CACHE/wheels
MIRROR=${EDGEKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}

log() { echo "[arm64_rootfs] $*" >&2; }
# shellcheck source=tools/wheels.sh
source "$(dirname "$0")/wheels.sh"
SITE=$ROOTFS/usr/local/lib/python$DEVICE_PYTHON/dist-packages   # on Debian python3's sys.path

need_debs() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

make_rootfs() {
    # The mark names the release: a root filesystem of an older one is made again.
    [[ "$(cat "$ROOTFS/.edgekit-rootfs" 2>/dev/null)" == "$SUITE" ]] && return
    log "debootstrap arm64 $SUITE -> $ROOTFS"
    # Build beside the target and rename at the end, so an interrupted run never looks finished.
    local tmp=$ROOTFS.partial
    rm -rf "$tmp" && mkdir -p "$CACHE"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,libstdc++6 \
        "$SUITE" "$tmp" "$MIRROR" >&2
    # --foreign only downloads and unpacks the essentials; the second stage needs chroot + binfmt.
    # Unpacking every downloaded .deb is enough to get a working python3 for qemu -L.
    for deb in "$tmp"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$tmp"; done
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    echo "$SUITE" >"$tmp/.edgekit-rootfs"
    rm -rf "$ROOTFS" && mv "$tmp" "$ROOTFS"
}

install_wheels() {
    [[ -f $SITE/.edgekit-wheels ]] && return
    log "unpacking wheels into $SITE"
    rm -rf "$SITE" && mkdir -p "$SITE"   # only our wheels live here; no stale versions
    for whl in "$WHEELS"/*.whl; do "$PYTHON" -m zipfile -e "$whl" "$SITE"; done
    touch "$SITE/.edgekit-wheels"
}

write_cpuinfo() {
    # onnxruntime's CPU detection reads /proc/cpuinfo and crashes or hangs on the host's x86 one.
    # qemu -L looks up ROOTFS/proc/cpuinfo first; Docker bind-mounts the same file.
    mkdir -p "$ROOTFS/proc"
    {
        for cpu in 0 1 2 3; do
            cat <<EOF
processor	: $cpu
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

EOF
        done
    } >"$ROOTFS/proc/cpuinfo"
}

write_wrapper() {
    # QEMU's default "max" CPU advertises SME; XNNPACK then runs SME int8 kernels that QEMU 7.2
    # computes wrongly (every sample gives the same output). Emulate the CPU the cpuinfo describes.
    cat >"$CACHE/python3" <<EOF
#!/bin/sh
# Python $DEVICE_PYTHON on emulated arm64 (made by edgekit tools/arm64_rootfs.sh)
QEMU_CPU=\${QEMU_CPU:-cortex-a76} exec qemu-aarch64-static -L "$ROOTFS" "$ROOTFS/usr/bin/python3" "\$@"
EOF
    chmod +x "$CACHE/python3"
}

verify() {
    local py=("$CACHE/python3")
    "${py[@]}" -c "import platform, numpy, onnxruntime as ort
print(platform.machine(), 'numpy', numpy.__version__, 'onnxruntime', ort.__version__, ort.get_available_providers())" >&2
    "${py[@]}" -c "import ai_edge_litert, ai_edge_litert.interpreter as li, executorch_numpy_runtime as et
print('ai_edge_litert', getattr(ai_edge_litert, '__version__', '?'), li.Interpreter.__name__,
      'executorch_numpy_runtime', et.__et_version__)" >&2
}

need_debs
make_rootfs
# New wheels: unpack them again.
# shellcheck disable=SC2086  # PACKAGES is a word list
if download_wheels aarch64 "$WHEELS" $PACKAGES; then rm -f "$SITE/.edgekit-wheels"; fi
install_wheels
write_cpuinfo
write_wrapper
verify
echo "$ROOTFS"

#!/usr/bin/env bash
# Build the edgekit device images (python3 + numpy + onnxruntime + ai-edge-litert + executorch-numpy-runtime
# + /runner.py) with no
# image registry: base images are imported from Debian root filesystems, wheels are installed offline.
#
#   tools/docker_images.sh [arm64] [x86_64]        # default: both
#   BASE=python:3.13-slim tools/docker_images.sh    # with a registry: an official base image instead
#
# Run as root: it installs docker.io if missing, starts dockerd if none answers, and registers the
# qemu aarch64 binfmt handler so arm64 images build and run on x86. Images already built from the same
# inputs are kept. Run an arm64 container with an ARM /proc/cpuinfo (onnxruntime needs it under QEMU):
#   docker run --rm --pull never --platform linux/arm64 -v "$CACHE/arm64/rootfs/proc/cpuinfo:/proc/cpuinfo:ro" ...
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EDGEKIT_CACHE:-$HOME/.cache/edgekit}
MIRROR=${EDGEKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
export DOCKER_BUILDKIT=0   # the legacy builder ships with docker.io; BuildKit needs the buildx plugin

log() { echo "[docker_images] $*" >&2; }
# shellcheck source=tools/wheels.sh
source "$ROOT/tools/wheels.sh"

ensure_docker() {
    if ! command -v dockerd >/dev/null; then
        log "installing docker.io"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >&2
    fi
    docker info >/dev/null 2>&1 && return
    log "starting dockerd (log: $CACHE/dockerd.log)"
    mkdir -p "$CACHE"
    nohup dockerd >"$CACHE/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
    log "dockerd did not come up; see $CACHE/dockerd.log" && exit 1
}

ensure_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc
    [[ -e $dir/register ]] || mount -t binfmt_misc binfmt_misc "$dir"
    [[ -e $dir/qemu-aarch64 ]] && return
    log "registering qemu-aarch64 binfmt handler"
    # The F flag makes the kernel open the interpreter now, so it also works inside containers.
    cat /usr/lib/binfmt.d/qemu-aarch64.conf >"$dir/register"
}

x86_64_rootfs() {
    local rootfs=$CACHE/x86_64/rootfs
    if [[ "$(cat "$rootfs/.edgekit-rootfs" 2>/dev/null)" != "$SUITE" ]]; then
        log "debootstrap amd64 $SUITE -> $rootfs"
        rm -rf "$rootfs.partial" && mkdir -p "$CACHE/x86_64"
        debootstrap --arch=amd64 --variant=minbase --include=python3,libstdc++6 \
            "$SUITE" "$rootfs.partial" "$MIRROR" >&2
        rm -rf "$rootfs.partial"/var/cache/apt/archives/*.deb
        echo "$SUITE" >"$rootfs.partial/.edgekit-rootfs"
        rm -rf "$rootfs" && mv "$rootfs.partial" "$rootfs"
    fi
    echo "$rootfs"
}

label() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

import_base() {  # import_base NAME ARCH ROOTFS
    local key tmp diff
    key=$(stat -c %Y "$3/.edgekit-rootfs")
    [[ "$(label "$1" edgekit.rootfs)" == "$key" ]] && return
    log "importing $3 as $1 ($2)"
    # This is `tar -C ROOTFS -c . | docker import - NAME`, written as a `docker load` archive because
    # docker 20.10 ignores `docker import --platform` and labels the image with the host architecture,
    # which breaks `--platform linux/arm64` builds and runs. Our unpacked wheels and the fake cpuinfo
    # stay out: the Dockerfile installs the wheels itself.
    tmp=$(mktemp -d)
    tar -C "$3" --exclude="./usr/local/lib/python$DEVICE_PYTHON/dist-packages" --exclude=./proc/cpuinfo \
        --exclude=./.edgekit-rootfs -cf "$tmp/layer.tar" .
    diff=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
    cat >"$tmp/config.json" <<JSON
{"architecture": "$2", "os": "linux",
 "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/bash"], "Labels": {"edgekit.rootfs": "$key"}},
 "rootfs": {"type": "layers", "diff_ids": ["sha256:$diff"]}}
JSON
    cat >"$tmp/manifest.json" <<JSON
[{"Config": "config.json", "RepoTags": ["$1:latest"], "Layers": ["layer.tar"]}]
JSON
    tar -C "$tmp" -c manifest.json config.json layer.tar | docker load >&2
    rm -rf "$tmp"
}

build_image() {  # build_image ARCH PLATFORM WHEELS BASE
    local name=edgekit-$1 context=$CACHE/docker/$1 key
    rm -rf "$context" && mkdir -p "$context/wheels"
    cp -l "$3"/*.whl "$context/wheels/"   # hard links: no second copy on disk
    cp "$ROOT/edgekit/device/runner.py" "$ROOT/edgekit/device/cpu.py" "$context/"
    key=$(cd "$context" && { ls wheels; cat runner.py cpu.py "$ROOT/docker/$1/Dockerfile"; docker image inspect -f '{{.Id}}' "$4" 2>/dev/null || echo "$4"; } | sha256sum | cut -c1-16)
    if [[ "$(label "$name" edgekit.inputs)" == "$key" ]]; then
        log "$name is up to date"
        return
    fi
    log "building $name from $4"
    docker build --platform "$2" --build-arg "BASE=$4" --label "edgekit.inputs=$key" \
        -f "$ROOT/docker/$1/Dockerfile" -t "$name" "$context" >&2
}

verify() {  # verify ARCH PLATFORM [docker run options]
    local arch=$1 platform=$2
    shift 2
    docker run --rm --pull never --platform "$platform" "$@" "edgekit-$arch" python3 -c \
        "import platform, numpy, onnxruntime, ai_edge_litert.interpreter, executorch_numpy_runtime
print(platform.machine(), 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" >&2
}

(($#)) || set -- arm64 x86_64
ensure_docker
for arch in "$@"; do
    case $arch in
    arm64)
        rootfs=$("$ROOT/tools/arm64_rootfs.sh")
        ensure_binfmt
        [[ -n ${BASE:-} ]] || import_base edgekit-arm64-base arm64 "$rootfs"
        build_image arm64 linux/arm64 "$CACHE/arm64/wheels" "${BASE:-edgekit-arm64-base}"
        verify arm64 linux/arm64 -v "$rootfs/proc/cpuinfo:/proc/cpuinfo:ro"
        ;;
    x86_64)
        wheels=$CACHE/x86_64/wheels
        # shellcheck disable=SC2086  # PACKAGES is a word list
        download_wheels x86_64 "$wheels" $PACKAGES || true
        if [[ -z ${BASE:-} ]]; then
            command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
            import_base edgekit-x86_64-base amd64 "$(x86_64_rootfs)"
        fi
        build_image x86_64 linux/amd64 "$wheels" "${BASE:-edgekit-x86_64-base}"
        verify x86_64 linux/amd64
        ;;
    *) log "unknown architecture $arch (arm64, x86_64)" && exit 2 ;;
    esac
done

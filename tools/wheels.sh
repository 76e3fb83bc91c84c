# shellcheck shell=bash
# Sourced by the tools/ scripts: the device Python's Debian release, and offline wheel sets for it.

# Debian trixie's python3 is 3.13: executorch-numpy-runtime (torch-free .pte runtime) needs 3.12 or newer.
SUITE=trixie
DEVICE_PYTHON=3.13
GLIBC_MINOR=41   # trixie's glibc 2.41
PACKAGES=${EDGEKIT_DEVICE_PACKAGES:-numpy onnxruntime ai-edge-litert executorch-numpy-runtime}

# download_wheels ARCH DEST PACKAGES...: manylinux wheels of PACKAGES for ARCH (aarch64 | x86_64) into DEST,
# with their dependencies. Returns 0 when it downloaded, 1 when DEST already held this set.
download_wheels() {
    local arch=$1 dest=$2
    shift 2
    # The mark names the Python and glibc too: wheels for another device Python are downloaded again.
    local mark="cp$DEVICE_PYTHON glibc 2.$GLIBC_MINOR $*"
    [[ -f $dest/.done && "$(cat "$dest/.done")" == "$mark" ]] && return 1
    echo "[wheels] downloading $arch wheels: $*" >&2
    rm -rf "$dest" && mkdir -p "$dest"
    # pip does not widen --platform to older compatible tags: list every manylinux tag that
    # the suite's glibc accepts, or it silently picks an old release (ai-edge-litert 2.x is 2_27).
    local platforms=(--platform "manylinux2014_$arch")
    for minor in $(seq 17 "$GLIBC_MINOR"); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
    "${PYTHON:-python3}" -m pip download --quiet --only-binary=:all: --dest "$dest" "${platforms[@]}" \
        --python-version "$DEVICE_PYTHON" --implementation cp "$@" >&2
    echo "$mark" >"$dest/.done"
}

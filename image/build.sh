#!/bin/sh
# Build the SDS server image (../Dockerfile) with no Docker daemon and no image registry, into an OCI
# archive:  build/sds-server.oci.tar  tagged  localhost/meshbridge/sds-server:<version from pyproject>.
#
#   image/build.sh            build (cached: see below)
#   image/build.sh --refresh  fetch Debian's packages and the wheels again (security updates)
#   image/build.sh tools      install what the build and tests/image need from Debian, if missing (root)
#
# Steps: (1) Debian trees from image/rootfs.sh (mmdebstrap), cached in build/image/cache by the
# script's hash; (2) wheels for cp311 manylinux x86_64 of pyproject's dependencies, `pip download`ed on
# this host, cached by the dependency list's hash; (3) both packed into build/image/inputs.tar, which the
# Dockerfile's inputs-local stage ADDs; (4) `buildah bud` (a throwaway vfs store under
# build/image/containers, chroot isolation) and `buildah push` to the archive, skipped when the hash of
# everything the image is built from is the one recorded for the archive. Nothing is fetched in (4).
set -eu

cd "$(dirname "$0")/.."
repo=$PWD
out_dir=$repo/build
work=$out_dir/image
cache=$work/cache
archive=${MESHBRIDGE_IMAGE_ARCHIVE:-$out_dir/sds-server.oci.tar}
tools="buildah umoci crun mmdebstrap"

log() { printf 'image: %s\n' "$*" >&2; }

missing_tools() {
    for t in $tools; do command -v "$t" >/dev/null 2>&1 || printf '%s ' "$t"; done
}

if [ "${1:-}" = tools ]; then
    missing=$(missing_tools)
    [ -z "$missing" ] && exit 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "missing: $missing; install them (Debian: apt-get install -y $tools) as root"
        exit 3
    fi
    log "installing $missing from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $tools >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $tools >&2; }
    exit 0
fi

refresh=0
[ "${1:-}" = --refresh ] && refresh=1

for t in buildah mmdebstrap; do
    command -v "$t" >/dev/null 2>&1 || { log "$t not found: run 'image/build.sh tools' (apt-get install -y $tools)"; exit 3; }
done

python=$repo/.venv/bin/python
[ -x "$python" ] || python=python3

mkdir -p "$cache"
exec 9>"$work/.lock"
flock 9  # one build at a time (a test and `make image` may race)

started=$(date +%s)
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
image=${MESHBRIDGE_IMAGE:-localhost/meshbridge/sds-server:$version}

# ---- (1) Debian trees
rootfs_key=$(sha256sum image/rootfs.sh | cut -c1-16)
rootfs=$cache/rootfs-$rootfs_key.tar
if [ "$refresh" = 1 ] || [ ! -s "$rootfs" ]; then
    log "Debian bookworm trees (mmdebstrap)"
    rm -f "$cache"/rootfs-*.tar
    image/rootfs.sh "$rootfs"
fi

# ---- (2) wheels: pyproject's dependencies + the build backend, for Debian's python3.11 on x86_64
deps=$("$python" -c '
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(sorted(p["project"]["dependencies"] + p["build-system"]["requires"])))')
wheels_key=$(printf '%s\n' "$deps" | sha256sum | cut -c1-16)
wheels=$cache/wheels-$wheels_key
if [ "$refresh" = 1 ] || [ ! -f "$wheels/.complete" ]; then
    log "wheels (pip download, cp311 manylinux x86_64)"
    rm -rf "$cache"/wheels-*
    mkdir -p "$wheels"
    # shellcheck disable=SC2086 # one requirement a line, none with spaces
    "$python" -m pip download --quiet --dest "$wheels" --only-binary=:all: \
        --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
        --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        $(printf '%s\n' "$deps" | tr '\n' ' ')
    touch "$wheels/.complete"
fi

# ---- (3) build/image/inputs.tar: /runtime, /build, /wheels
inputs=$work/inputs.tar
inputs_key="$rootfs_key-$wheels_key"
if [ ! -s "$inputs" ] || [ "$(cat "$work/inputs.key" 2>/dev/null)" != "$inputs_key" ]; then
    log "packing inputs"
    cp "$rootfs" "$inputs.tmp"
    tar --numeric-owner --owner=0 --group=0 --sort=name -C "$wheels" \
        --transform 's|^\.|wheels|' --exclude=.complete -rf "$inputs.tmp" .
    mv "$inputs.tmp" "$inputs"
    printf '%s\n' "$inputs_key" > "$work/inputs.key"
fi

# ---- (4) buildah bud + push to the OCI archive, unless nothing that goes into the image changed
image_key=$( {
    printf '%s\n' "$image" "$version" "$inputs_key"
    find Dockerfile .dockerignore pyproject.toml README.md bridge sds_server istio scone -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
if [ -s "$archive" ] && [ "$(cat "$work/archive.key" 2>/dev/null)" = "$image_key $archive" ]; then
    log "$archive is up to date ($image)"
    exit 0
fi
# A throwaway store: without --layers there is no cache worth keeping, and vfs keeps every layer whole.
store=$work/containers
buildah() {
    command buildah --storage-driver vfs --root "$store/root" --runroot "$store/run" "$@"
}
rm -rf "$store"
log "buildah bud -> $image"
buildah bud --quiet --isolation chroot \
    --build-arg INPUTS=inputs-local --build-arg PIP_NO_INDEX=1 --build-arg VERSION="$version" \
    --tag "$image" --file Dockerfile . >/dev/null
rm -f "$archive.tmp"
buildah push --quiet --format oci "$image" "oci-archive:$archive.tmp:$image"
mv "$archive.tmp" "$archive"
printf '%s %s\n' "$image_key" "$archive" > "$work/archive.key"
rm -rf "$store"

log "$archive ($(stat -c %s "$archive") bytes), $image, $(($(date +%s) - started)) s"

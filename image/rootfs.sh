#!/bin/sh
# Debian bookworm root filesystems for the SDS server image, from Debian's packages (mmdebstrap), no
# registry needed. Writes one tarball holding two trees:
#
#   runtime/  python3.11, the libraries it links and libstdc++ (grpcio's wheel), nothing else: no shell, no dpkg/apt, no docs.
#             /etc/passwd names uid 1337 (istio-proxy). The stdlib is byte-compiled (what python3.11's
#             postinst would do; the root filesystem is read-only at run time, so nothing can be cached
#             later). /var/lib/dpkg/status.d/<package> holds each package's control record, the
#             distroless convention, so image scanners can see what is inside.
#   build/    the same plus python3.11-venv (ensurepip's wheels): the Dockerfile's build stage.
#
# Variant "extract": packages are unpacked, no maintainer script runs, so there is no chroot step that
# needs /proc or privileges beyond root's (it also runs inside `docker build`, see ../Dockerfile).
#
# usage: image/rootfs.sh OUT.tar      (run as root; needs mmdebstrap, dpkg-deb, tar)
set -eu

out=${1:?usage: rootfs.sh OUT.tar}
suite=bookworm
mirror=${MESHBRIDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${MESHBRIDGE_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

work=$(mktemp -d "${TMPDIR:-/tmp}/mb-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Runs on the host ($1 = the target tree) right after extraction, while the .debs are still in the
# target's apt cache (the extract variant runs no --customize-hook).
status_d='set -eu
mkdir -p "$1/var/lib/dpkg/status.d"
for deb in "$1"/var/cache/apt/archives/*.deb; do
    dpkg-deb -f "$deb" > "$1/var/lib/dpkg/status.d/$(dpkg-deb -f "$deb" Package)"
done'

trim() {  # trim ROOT: what a runtime never reads, dpkg and tar (readline-common depends on dpkg for its
          # maintainer scripts; removed with their status records), then users and byte-code
    root=$1
    rm -rf "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale \
        "$root"/usr/share/lintian "$root"/usr/share/bug "$root"/usr/share/doc-base "$root"/usr/share/polkit-1 \
        "$root"/usr/share/applications "$root"/usr/share/pixmaps "$root"/usr/share/binfmts \
        "$root"/usr/share/dpkg "$root"/usr/libexec/dpkg "$root"/usr/bin/dpkg* "$root"/usr/sbin/dpkg* \
        "$root"/usr/bin/update-alternatives "$root"/sbin/start-stop-daemon "$root"/bin/tar \
        "$root"/usr/sbin/tarcat "$root"/usr/sbin/rmt-tar "$root"/var/lib/dpkg/status.d/dpkg \
        "$root"/var/lib/dpkg/status.d/tar \
        "$root"/etc/dpkg "$root"/etc/alternatives "$root"/etc/apt "$root"/etc/cron.daily \
        "$root"/etc/logrotate.d "$root"/var/lib/apt "$root"/var/cache/apt "$root"/var/log/* \
        "$root"/lib/systemd "$root"/usr/lib/systemd "$root"/usr/lib/mime "$root"/usr/lib/binfmt.d \
        "$root"/usr/lib/tmpfiles.d
    find "$root/var/lib/dpkg" -mindepth 1 -maxdepth 1 ! -name status.d -exec rm -rf {} +
    find "$root/dev" -mindepth 1 -delete
    printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
        'istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/usr/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' > "$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'istio-proxy:x:1337:' 'nogroup:x:65534:' > "$root/etc/group"
    chroot "$root" /usr/bin/python3.11 -m compileall -q --invalidation-mode unchecked-hash \
        -x '/(test|idle_test|lib2to3/tests)/' /usr/lib/python3.11
}

tree() {  # tree NAME PACKAGES
    mmdebstrap --quiet --mode=root --variant=extract --include="$2" \
        --extract-hook="$status_d" \
        "$suite" "$work/$1" \
        "deb $mirror $suite main" \
        "deb $mirror $suite-updates main" \
        "deb $security $suite-security main"
    trim "$work/$1"
}

# libstdc++6: grpcio's manylinux wheel links it (python3.11 does not pull it in)
tree runtime python3.11,libstdc++6
tree build python3.11-venv,libstdc++6

tar --numeric-owner --sort=name -C "$work" -cf "$out.tmp" runtime build
mv "$out.tmp" "$out"

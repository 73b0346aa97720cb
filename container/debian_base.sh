#!/usr/bin/env bash
# The base image where the public one (python:3.11-slim-bookworm) cannot be pulled: Debian 12
# with its Python 3.11, made from Debian packages with debootstrap, from the mirror this
# machine's apt already uses. Built once: the image stays in the engine's store, and its root
# file system is kept as a tarball in CACHE_DIR, so a rerun (or a wiped engine store) imports it
# in seconds instead of bootstrapping again (about 100 s).
#
#   container/debian_base.sh ENGINE IMAGE CACHE_DIR
set -euo pipefail
engine=${1:?engine (podman or docker)} image=${2:?image name} cache=${3:?cache folder}
suite=bookworm
tarball="$cache/debian-$suite-py311.tar"

if "$engine" image exists "$image" 2>/dev/null || "$engine" image inspect "$image" >/dev/null 2>&1; then
    echo "debian_base: $image is already built"
    exit 0
fi
if [ ! -s "$tarball" ]; then
    # The first deb822 or one-line source apt reads; deb.debian.org when there is none.
    mirror=$(sed -n 's/^URIs: *\(\S*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\(\S*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    root=$(mktemp -d "${TMPDIR:-/tmp}/depthid-debootstrap.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "debian_base: debootstrap $suite from $mirror (about 100 s)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$root" "$mirror" >/dev/null
    # Smaller and closer to the public image: no package lists or caches in the base.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    mkdir -p "$cache"
    tar -C "$root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball" # never a half-written cache
fi
echo "debian_base: importing $tarball as $image"
"$engine" import --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
"$engine" image ls "$image"

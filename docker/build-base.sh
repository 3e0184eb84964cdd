#!/usr/bin/env bash
# Builds the local stand-in for docker/Dockerfile's CUDA base image:
#
#   localhost/spd-bench-base:bookworm-py311-torch<TORCH>-cpu   (<TORCH> from requirements/lock.txt)
#
# Debian bookworm (minbase debootstrap) + python3/venv/pip + ca-certificates + the CPU torch
# wheel the lock pins, plus a uid-1000 user `ubuntu`, so that, like the official
# pytorch/pytorch:2.13.0 images (Ubuntu 24.04), it has a system python3, an externally
# managed site-packages with torch in it, and uid 1000 taken. No registry is needed: this
# machine reaches only PyPI and the Debian mirrors.
#
#   bash docker/build-base.sh              build it (exit 0 at once if it exists)
#   bash docker/build-base.sh --podman-env write the podman config; print `export` lines
#
# Cached under docker/.build/ (git-ignored): the rootfs tarball and the torch wheel.
# Environment: SPD_BASE_IMAGE (tag to build), DEBIAN_MIRROR, TORCH_WHEEL (path to a wheel),
# SMOKE_CA_BUNDLE (CA bundle mounted into build steps; default: the host's), REBUILD_BASE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ROOT}/docker/.build"
LOCK="${ROOT}/requirements/lock.txt"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS_TAR="${BUILD_DIR}/rootfs-${DEBIAN_SUITE}-minbase-py3.tar.gz"
ROOTFS_IMAGE="localhost/spd-bench-rootfs:${DEBIAN_SUITE}-minbase-py3"
WHEEL_DIR="${BUILD_DIR}/wheels"
PODMAN_CONF_DIR="${BUILD_DIR}/podman"

die() { echo "build-base: FAIL: $*" >&2; exit 1; }
podman() { command podman ${SMOKE_STORAGE_DRIVER:+--storage-driver "${SMOKE_STORAGE_DRIVER}"} "$@"; }
log() { echo "build-base: $*" >&2; }

# --- podman configuration -------------------------------------------------------------
# What podman needs on this kind of machine (a VM with hybrid cgroup v1, no systemd, an
# open-files hard limit of 20000):
#   runtime runc       crun 1.8 refuses hybrid cgroups ("cgroups in hybrid mode not supported")
#   cgroupfs           there is no systemd to manage cgroups
#   events file        there is no journald
#   default_ulimits    podman's default nofile (1048576) is above the hard limit: setrlimit EPERM
# Storage stays podman's default (overlay on ext4, as root). No storage.conf: with
# CONTAINERS_STORAGE_CONF set, podman 4.3 waits out conmon's 20 s exit timeout on every
# `podman run`. Where overlay is unavailable, SMOKE_STORAGE_DRIVER=vfs passes
# --storage-driver to every podman call.
write_podman_conf() {
    mkdir -p "${PODMAN_CONF_DIR}"
    cat > "${PODMAN_CONF_DIR}/containers.conf" <<'EOF'
# Written by docker/build-base.sh; used through CONTAINERS_CONF. Do not edit: it is rewritten.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
}

podman_env() {
    write_podman_conf
    echo "export CONTAINERS_CONF='${PODMAN_CONF_DIR}/containers.conf'"
}

if [ "${1:-}" = "--podman-env" ]; then
    podman_env
    exit 0
fi
[ $# -eq 0 ] || die "unknown argument: $1 (usage: build-base.sh [--podman-env])"

if [ -z "${CONTAINERS_CONF:-}" ]; then
    eval "$(podman_env)"
fi

# --- tools ----------------------------------------------------------------------------
missing=()
type -P podman >/dev/null || missing+=(podman)
type -P runc >/dev/null || missing+=(runc)
type -P debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

TORCH_VERSION="$(sed -n 's/^torch==\([^[:space:];]*\).*/\1/p' "${LOCK}")"
[ -n "${TORCH_VERSION}" ] || die "no torch==<version> line in ${LOCK}"
BASE_IMAGE="${SPD_BASE_IMAGE:-localhost/spd-bench-base:${DEBIAN_SUITE}-py311-torch${TORCH_VERSION}-cpu}"

if [ "${REBUILD_BASE:-0}" != 1 ] && podman image exists "${BASE_IMAGE}"; then
    log "${BASE_IMAGE} exists; nothing to do"
    echo "${BASE_IMAGE}"
    exit 0
fi

mkdir -p "${BUILD_DIR}" "${WHEEL_DIR}"

# The host's CA bundle goes into build steps (read-only, not stored in the image): where
# egress passes through a TLS-inspecting proxy, the container's own bundle cannot reach PyPI.
CA_BUNDLE="${SMOKE_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
ca_mount=()
if [ -f "${CA_BUNDLE}" ]; then
    ca_mount=(--volume "${CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro")
fi

# --- 1. rootfs tarball (debootstrap, cached) --------------------------------------------
if [ ! -s "${ROOTFS_TAR}" ]; then
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    log "debootstrap --variant=minbase ${DEBIAN_SUITE} (about a minute)"
    tmp_root="$(mktemp -d "${BUILD_DIR}/rootfs.XXXXXX")"
    trap 'rm -rf "${tmp_root}"' EXIT
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        "${DEBIAN_SUITE}" "${tmp_root}" "${DEBIAN_MIRROR}" > "${BUILD_DIR}/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see ${BUILD_DIR}/debootstrap.log"
    rm -rf "${tmp_root}"/var/cache/apt/archives/*.deb "${tmp_root}"/var/lib/apt/lists/* \
           "${tmp_root}"/var/log/* "${tmp_root}"/etc/hostname "${tmp_root}"/etc/resolv.conf
    tar --numeric-owner -C "${tmp_root}" -czf "${ROOTFS_TAR}.tmp" . || die "could not write ${ROOTFS_TAR}"
    mv "${ROOTFS_TAR}.tmp" "${ROOTFS_TAR}"
    rm -rf "${tmp_root}"
    trap - EXIT
fi

if [ "${REBUILD_BASE:-0}" = 1 ] || ! podman image exists "${ROOTFS_IMAGE}"; then
    log "podman import ${ROOTFS_TAR##*/} -> ${ROOTFS_IMAGE}"
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        "${ROOTFS_TAR}" "${ROOTFS_IMAGE}" >/dev/null || die "podman import failed"
fi

# --- 2. the torch wheel the lock pins (CPU build, from this machine's wheels) ----------
wheel="${TORCH_WHEEL:-}"
if [ -z "${wheel}" ]; then
    wheel="$(ls "${WHEEL_DIR}"/torch-"${TORCH_VERSION}"*-cp311-*.whl 2>/dev/null | head -n1 || true)"
fi
if [ -z "${wheel}" ]; then
    log "fetching torch==${TORCH_VERSION} (cp311) with pip download"
    # pip's own configuration (find-links) supplies the local +cpu wheel where there is one;
    # a local version (+cpu) ranks above the bare PyPI release, which is a CUDA build.
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d "${WHEEL_DIR}" "torch==${TORCH_VERSION}" > "${BUILD_DIR}/pip-download.log" 2>&1 \
        || { tail -n 5 "${BUILD_DIR}/pip-download.log" >&2; die "pip download torch==${TORCH_VERSION} failed"; }
    wheel="$(ls "${WHEEL_DIR}"/torch-"${TORCH_VERSION}"*-cp311-*.whl 2>/dev/null | head -n1 || true)"
fi
[ -f "${wheel}" ] || die "no torch ${TORCH_VERSION} cp311 wheel (set TORCH_WHEEL=/path/to/wheel)"
case "${wheel##*/}" in
    *+cpu*) ;;
    *) log "warning: ${wheel##*/} is not a +cpu build; pip will also pull its CUDA libraries" ;;
esac

# --- 3. the base image ---------------------------------------------------------------------
ctx="${BUILD_DIR}/base-context"
rm -rf "${ctx}"
mkdir -p "${ctx}"
cp "${LOCK}" "${ctx}/lock.txt"
cat > "${ctx}/Containerfile" <<EOF
# Generated by docker/build-base.sh: CPU stand-in for pytorch/pytorch:${TORCH_VERSION}-cuda*-runtime.
FROM ${ROOTFS_IMAGE}
ENV LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# Ubuntu 24.04 images ship user ubuntu (uid/gid 1000); mimic it so the Dockerfile's user
# handling is exercised.
RUN groupadd --gid 1000 ubuntu && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ubuntu
COPY lock.txt /tmp/lock.txt
RUN python3 -m pip install --no-cache-dir --break-system-packages --constraint /tmp/lock.txt \\
        /wheels/${wheel##*/} \\
    && rm /tmp/lock.txt \\
    && python3 -c 'import torch; print("torch", torch.__version__)'
WORKDIR /workspace
CMD ["/bin/bash"]
EOF

log "podman build ${BASE_IMAGE} (installs torch ${wheel##*/} and its dependencies)"
podman build --layers \
    --volume "$(cd "$(dirname "${wheel}")" && pwd):/wheels:ro" \
    "${ca_mount[@]}" \
    --label "org.opencontainers.image.description=spd-bench CPU stand-in base (bookworm, python3.11, torch ${TORCH_VERSION})" \
    -t "${BASE_IMAGE}" -f "${ctx}/Containerfile" "${ctx}" > "${BUILD_DIR}/base-build.log" 2>&1 \
    || { tail -n 25 "${BUILD_DIR}/base-build.log" >&2; die "podman build of ${BASE_IMAGE} failed; see ${BUILD_DIR}/base-build.log"; }

log "built ${BASE_IMAGE}"
echo "${BASE_IMAGE}"

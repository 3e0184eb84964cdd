#!/usr/bin/env bash
# make container-smoke: build docker/Dockerfile on a local CPU stand-in base with podman and
# run the smoke grid in the container, as its non-root user, on this machine (no GPU, no
# Docker engine, no registry needed). Meant for CI (`bash .ci/run`: root, CI=true, no stdin).
#
# Checks, each reported as one `container-smoke: FAIL: ...` line:
#   - the image builds with BASE_IMAGE=<stand-in> (docker/build-base.sh)
#   - the container runs as a non-root uid
#   - every package in requirements/lock.txt is installed at exactly the locked version, and
#     nothing outside the lock was added on top of the base image; `pip check` is clean
#   - torch and transformers import; `spd-bench --help` runs
#   - `spd-bench run configs/smoke.yaml --out /results/smoke` succeeds with /results mounted,
#     and `spd-bench table N` writes a non-empty markdown table for N = 1, 2, 3
#
# Environment: SMOKE_IMAGE (tag, default spd-bench:smoke), SMOKE_RESULTS (host results dir,
# default docker/.build/smoke-results), SMOKE_CONFIG (grid, default configs/smoke.yaml; a path
# inside the repository), SMOKE_OFFLINE=0 to let the smoke run reach the HF hub,
# SMOKE_SKIP_GRID=1 to stop after the image checks, SMOKE_STORAGE_DRIVER=vfs where overlay
# is unavailable; build-base.sh's variables pass through.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
BUILD_DIR="${ROOT}/docker/.build"
LOCK="${ROOT}/requirements/lock.txt"
IMAGE="${SMOKE_IMAGE:-spd-bench:smoke}"
RESULTS="${SMOKE_RESULTS:-${BUILD_DIR}/smoke-results}"
CONFIG="${SMOKE_CONFIG:-configs/smoke.yaml}"

failures=0
log()   { echo "container-smoke: $*" >&2; }
fail()  { echo "container-smoke: FAIL: $*" >&2; failures=$((failures + 1)); }
fatal() { echo "container-smoke: FAIL: $*" >&2; echo "container-smoke: aborted" >&2; exit 1; }
podman() { command podman ${SMOKE_STORAGE_DRIVER:+--storage-driver "${SMOKE_STORAGE_DRIVER}"} "$@"; }
started=${SECONDS}
mkdir -p "${BUILD_DIR}"

# --- 1. tools --------------------------------------------------------------------------
missing=()
type -P podman >/dev/null || missing+=(podman)
type -P runc >/dev/null || missing+=(runc)
type -P debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fatal "missing ${missing[*]}: run as root or apt-get install ${missing[*]}"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >"${BUILD_DIR}/apt.log" 2>&1 \
        || fatal "apt-get update failed; see ${BUILD_DIR}/apt.log"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >>"${BUILD_DIR}/apt.log" 2>&1 \
        || fatal "apt-get install ${missing[*]} failed; see ${BUILD_DIR}/apt.log"
fi

# --- 2. podman configuration (runc, cgroupfs, file events, ulimits; see build-base.sh) ---
eval "$(bash docker/build-base.sh --podman-env)" || fatal "could not write the podman configuration"
podman info >/dev/null 2>"${BUILD_DIR}/podman-info.log" \
    || fatal "podman does not work here; see ${BUILD_DIR}/podman-info.log"

# --- 3. stand-in base, then the image ------------------------------------------------------
base_started=${SECONDS}
base_image="$(bash docker/build-base.sh </dev/null)" || fatal "docker/build-base.sh failed"
base_image="$(printf '%s\n' "${base_image}" | tail -n1)"
log "base image ${base_image} ready in $((SECONDS - base_started)) s"

CA_BUNDLE="${SMOKE_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
ca_mount=()
if [ -f "${CA_BUNDLE}" ]; then
    # Build steps only (not stored in the image): lets pip through a TLS-inspecting proxy.
    ca_mount=(--volume "${CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro")
fi

log "podman build -f docker/Dockerfile -t ${IMAGE} (BASE_IMAGE=${base_image})"
build_started=${SECONDS}
# --format docker: the OCI format drops SHELL (buildah warns and ignores it).
# GIT_SHA: the image has no .git, so the source commit reaches every run's manifest.json through
# SPD_BENCH_GIT_SHA (checked after the smoke grid). Empty outside a git checkout.
git_sha="$(git rev-parse --verify HEAD 2>/dev/null || true)"
podman build --format docker --layers \
    --build-arg "BASE_IMAGE=${base_image}" --build-arg "GIT_SHA=${git_sha}" \
    "${ca_mount[@]}" \
    -f docker/Dockerfile -t "${IMAGE}" . </dev/null >"${BUILD_DIR}/image-build.log" 2>&1 \
    || { tail -n 30 "${BUILD_DIR}/image-build.log" >&2
         fatal "podman build of docker/Dockerfile failed; see ${BUILD_DIR}/image-build.log"; }
log "image built in $((SECONDS - build_started)) s"
# Earlier builds' images (untagged now) would pile up on a CI machine; the tagged image's own
# layers, the dependency layer included, stay.
podman image prune -f >/dev/null 2>&1 || true

# Every check below runs the image as it ships: its own USER, no extra privileges.
in_image() { podman run --rm --network=none "$@" </dev/null; }

# --- 4. non-root ---------------------------------------------------------------------------
uid="$(in_image --entrypoint id "${IMAGE}" -u 2>&1)"
if [ -z "${uid}" ] || ! [[ "${uid}" =~ ^[0-9]+$ ]]; then
    fail "could not read the container's uid (id -u said: ${uid})"
elif [ "${uid}" = 0 ]; then
    fail "the container runs as root (id -u = 0); docker/Dockerfile must end with a non-root USER"
fi
gid="$(in_image --entrypoint id "${IMAGE}" -g 2>/dev/null)"
config_user="$(podman image inspect --format '{{.Config.User}}' "${IMAGE}" 2>/dev/null)"
case "${config_user}" in
    ""|0|0:*|root|root:*) fail "image config User is '${config_user}', not a non-root user" ;;
esac

# --- 5. installed versions == requirements/lock.txt ----------------------------------------
# `pip list --format=freeze` is `pip freeze --all` with plain versions for packages installed
# from a file (the base's torch wheel would read `torch @ file:///...` in pip freeze).
freeze_image="${BUILD_DIR}/freeze-image.txt"
freeze_base="${BUILD_DIR}/freeze-base.txt"
if ! in_image --entrypoint python3 "${IMAGE}" -m pip list --format=freeze >"${freeze_image}" 2>"${freeze_image}.err"; then
    fail "pip list failed in ${IMAGE}: $(tail -n1 "${freeze_image}.err")"
elif ! in_image --entrypoint python3 "${base_image}" -m pip list --format=freeze >"${freeze_base}" 2>"${freeze_base}.err"; then
    fail "pip list failed in ${base_image}: $(tail -n1 "${freeze_base}.err")"
else
    version_report="$(python3 - "${LOCK}" "${freeze_image}" "${freeze_base}" <<'PY'
import re
import sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def parse(path):
    pins = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if m:
            pins[norm(m.group(1))] = m.group(2)
    return pins

lock, image, base = (parse(p) for p in sys.argv[1:4])
public = lambda v: v.split("+", 1)[0]          # 2.13.0+cpu / +cu126 is the lock's 2.13.0
for name, version in sorted(lock.items()):
    if name not in image:
        print(f"{name}=={version} is pinned in requirements/lock.txt but not installed in the image")
    elif public(image[name]) != version:
        print(f"{name} is {image[name]} in the image, requirements/lock.txt pins {version}")
for name in sorted(set(image) - set(lock) - set(base) - {"spd-bench"}):
    print(f"{name}=={image[name]} is installed in the image but not pinned in requirements/lock.txt")
if "spd-bench" not in image:
    print("spd-bench itself is not installed in the image")
PY
)" || fail "the version comparison script failed"
    while IFS= read -r line; do
        [ -n "${line}" ] && fail "${line}"
    done <<<"${version_report}"
fi
if ! pip_check="$(in_image --entrypoint python3 "${IMAGE}" -m pip check 2>&1)"; then
    while IFS= read -r line; do
        [ -n "${line}" ] && fail "pip check: ${line}"
    done <<<"${pip_check}"
fi

# --- 6. imports and the CLI, as the non-root user ------------------------------------------
lock_torch="$(sed -n 's/^torch==\([^[:space:];]*\).*/\1/p' "${LOCK}")"
if ! torch_version="$(in_image --entrypoint python3 "${IMAGE}" -c \
        'import torch, transformers; print(torch.__version__)' 2>&1)"; then
    fail "import torch, transformers failed in the container: $(printf '%s' "${torch_version}" | tail -n1)"
elif [ "${torch_version%%+*}" != "${lock_torch}" ]; then
    fail "torch in the container is ${torch_version}, requirements/lock.txt pins ${lock_torch}"
fi
if ! help_out="$(in_image "${IMAGE}" --help 2>&1)"; then
    fail "spd-bench --help failed in the container: $(printf '%s' "${help_out}" | tail -n1)"
fi

# --- 7. the smoke grid and its tables --------------------------------------------------------
if [ "${SMOKE_SKIP_GRID:-0}" = 1 ]; then
    log "SMOKE_SKIP_GRID=1: not running the smoke grid"
else
    rm -rf "${RESULTS}"
    mkdir -p "${RESULTS}"
    # The container user (uid ${uid}) must be able to write the bind-mounted directory.
    if [ "$(id -u)" = 0 ]; then
        chown "${uid}:${gid:-${uid}}" "${RESULTS}"
    else
        podman unshare chown "${uid}:${gid:-${uid}}" "${RESULTS}"
    fi
    # The smoke grid uses the built-in samples and a random-init tiny BERT: it needs no network.
    offline=(--network=none -e HF_HUB_OFFLINE=1 -e HF_DATASETS_OFFLINE=1)
    [ "${SMOKE_OFFLINE:-1}" = 1 ] || offline=()
    run_in() { podman run --rm -v "${RESULTS}:/results" "${offline[@]}" "${IMAGE}" "$@" </dev/null; }

    log "spd-bench run ${CONFIG} --out /results/smoke"
    grid_started=${SECONDS}
    if ! run_in run "${CONFIG}" --out /results/smoke --quiet >"${BUILD_DIR}/smoke-run.log" 2>&1; then
        tail -n 20 "${BUILD_DIR}/smoke-run.log" >&2
        fail "spd-bench run ${CONFIG} failed in the container; see ${BUILD_DIR}/smoke-run.log"
    fi
    log "smoke grid took $((SECONDS - grid_started)) s"
    manifest="$(find "${RESULTS}/smoke/cells" -name manifest.json 2>/dev/null | head -n1)"
    if [ -z "${manifest}" ]; then
        fail "the smoke grid left no cells/*/manifest.json under ${RESULTS}/smoke"
    elif [ -n "${git_sha}" ] && ! grep -q "\"git_sha\": \"${git_sha}\"" "${manifest}"; then
        fail "${manifest} does not record the source commit ${git_sha} (GIT_SHA build argument)"
    fi
    for n in 1 2 3; do
        table="${RESULTS}/table${n}.md"
        if ! out="$(run_in table "${n}" /results/smoke --out "/results/table${n}.md" 2>&1)"; then
            fail "spd-bench table ${n} failed in the container: $(printf '%s' "${out}" | tail -n1)"
        elif [ ! -s "${table}" ]; then
            fail "spd-bench table ${n} wrote no (or an empty) ${table}"
        elif ! grep -qE '^[[:space:]]*\|.*\|[[:space:]]*$' "${table}" \
            || ! grep -qE '^[[:space:]]*\|?[[:space:]]*:?-{3,}:?[[:space:]]*(\|[[:space:]]*:?-{3,}:?[[:space:]]*)+\|?[[:space:]]*$' "${table}"; then
            fail "${table} is not a markdown table (no | header | row with a |---| separator)"
        fi
    done
fi

if [ "${failures}" -gt 0 ]; then
    log "${failures} check(s) failed ($((SECONDS - started)) s)"
    exit 1
fi
log "OK: ${IMAGE} built on ${base_image}, runs as uid ${uid}, matches requirements/lock.txt$([ "${SMOKE_SKIP_GRID:-0}" = 1 ] || echo ", smoke grid and tables 1-3 written to ${RESULTS}") ($((SECONDS - started)) s)"

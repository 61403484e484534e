#!/usr/bin/env bash
# Starts the services the platform tests need: PostgreSQL and Redis on
# loopback, installing them (and Chromium, for the dashboard test, and
# Mesa's software Vulkan driver lavapipe, for the wgpu backend's tests)
# from Debian's packages when missing, and NVIDIA's run-time compiler NVRTC
# from PyPI (the CUDA kernels compile for sm_90 here; no GPU runs them).
# Source it: it exports the URLs the tests read (BITNET_TEST_POSTGRES_URL,
# BITNET_TEST_REDIS_URL, BITNET_TEST_CHROMIUM), BITNET_REQUIRE_SERVICES=1,
# BITNET_TEST_WGPU=1 and BITNET_TEST_NVRTC=1, so a test whose service,
# GPU adapter or compiler is missing fails instead of skipping.
set -euo pipefail

services_dir="${BITNET_SERVICES_DIR:-${TMPDIR:-/tmp}/bitnet-ci-services}"
pg_port="${BITNET_CI_PG_PORT:-55432}"
redis_port="${BITNET_CI_REDIS_PORT:-56379}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi

missing=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
dpkg -s libvulkan1 >/dev/null 2>&1 || missing+=(libvulkan1)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} from Debian's packages"
    $sudo_cmd apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
mkdir -p "$services_dir"
# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
    chown postgres "$services_dir"
fi
pg_data="$services_dir/pg"
if [ ! -f "$pg_data/PG_VERSION" ]; then
    "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$services_dir/pg.log" -w \
        -o "-p $pg_port -k $services_dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null
fi

if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --logfile "$services_dir/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

export BITNET_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export BITNET_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export BITNET_TEST_CHROMIUM="$(command -v chromium)"
# NVRTC for CUDA 13 (the wheel holds libnvrtc.so.13 and its builtins).
nvrtc_dir="$services_dir/nvrtc"
if [ ! -e "$nvrtc_dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    echo "installing NVRTC (nvidia-cuda-nvrtc) from PyPI"
    python3 -m pip install -q --no-deps --target "$nvrtc_dir" "nvidia-cuda-nvrtc>=13,<14"
fi
export LD_LIBRARY_PATH="$nvrtc_dir/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export BITNET_TEST_NVRTC=1

export BITNET_REQUIRE_SERVICES=1
export BITNET_TEST_WGPU=1
# Mesa warns on every device open without it (there is no session here).
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$services_dir}"
echo "services: PostgreSQL on $pg_port, Redis on $redis_port, Chromium at $BITNET_TEST_CHROMIUM"

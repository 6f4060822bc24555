#!/usr/bin/env bash
# Install what sentinel-ebpf needs (Debian packages, then the package itself into .venv). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (apt-get and BPF need it): sudo bash $0" >&2
    exit 1
fi

PYTHON=${PYTHON:-python3}
# python3-venv: a fresh Debian 12 has python3 without the venv module's ensurepip (no `python3 -m venv`)
APT_PACKAGES=(clang-19 libbpf-dev bpftool iproute2 curl nginx-light wrk libcap2-bin openssl procps python3 python3-venv
              etcd-server chromium redis-server)
missing=0
for cmd in clang-19 bpftool ip tc curl nginx wrk capsh openssl pgrep "$PYTHON" etcd chromium redis-server; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing=1
done
[ -f /usr/include/bpf/bpf_helpers.h ] || missing=1
"$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1 || missing=1
if [ "$missing" = 1 ]; then
    echo "setup.sh: installing ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

# The Debian nginx and redis-server packages may start system services; the tests run their own on other
# addresses (redis-server on Unix sockets in temporary directories).
# chromium: the dashboard's browser tests drive it through Playwright (pip, `test` extra); Playwright's
# own browser download (`playwright install`) is never used.
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Editable install: the build hook compiles bpf/*.bpf.c with clang into the package.
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup.sh: ready (.venv/bin/sentinel-ebpf)"

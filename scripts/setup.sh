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
APT_PACKAGES=(clang-19 libbpf-dev bpftool iproute2 curl nginx-light wrk libcap2-bin openssl procps python3 python3-venv)
missing=0
for cmd in clang-19 bpftool ip tc curl nginx wrk capsh openssl pgrep "$PYTHON"; do
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

# The Debian nginx package may start a system nginx; the tests run their own on other addresses.
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Editable install: the build hook compiles bpf/*.bpf.c with clang into the package.
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup.sh: ready (.venv/bin/sentinel-ebpf)"

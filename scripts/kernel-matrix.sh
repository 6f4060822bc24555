#!/usr/bin/env bash
# Run the dataplane tier and an integration smoke on another kernel: a Debian kernel package, downloaded
# and unpacked (never installed as this machine's kernel), booted with virtme-ng and qemu over this
# checkout (the guest sees the host's filesystem read-only, so it uses the checkout's .venv and BPF objects).
#
#   bash scripts/kernel-matrix.sh [KERNEL_PACKAGE]
#
# KERNEL_PACKAGE defaults to the newest linux-image-6.1.0-*-amd64-unsigned (Debian 12's kernel); a package
# this machine's apt sources lack is looked up in Debian 11's (linux-image-5.10.0-*-amd64-unsigned);
# "5.10" stands for the newest of those.
# KERNEL_MATRIX_EXPECT_REFUSAL=TEXT: a kernel the enforcement programs need more than; instead of the demo
# and pytest, `run` must refuse at once saying TEXT (scripts/refusal-smoke.sh).
# KERNEL_MATRIX_ACCEL=kvm|tcg forces the accelerator (default: KVM when a probe boot shows it works).
# KERNEL_MATRIX_TESTS overrides the pytest arguments run in the guest.
# Prints the guest's kernel version and pytest's summary; exits with pytest's status (or the smoke's).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

source scripts/as-root.sh
[ -x .venv/bin/python ] || { echo "kernel-matrix: run scripts/setup.sh first (no .venv)" >&2; exit 2; }

CACHE=$ROOT/.kernel-matrix
mkdir -p "$CACHE"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v depmod >/dev/null || [ -x /usr/sbin/depmod ] || need+=(kmod)
command -v busybox >/dev/null || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    echo "kernel-matrix: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x "$CACHE/vng/bin/vng" ]; then
    echo "kernel-matrix: installing virtme-ng into $CACHE/vng"
    python3 -m venv "$CACHE/vng"
    "$CACHE/vng/bin/pip" install -q "virtme-ng==1.42" >/dev/null
fi
export PATH="$CACHE/vng/bin:$PATH:/usr/sbin:/sbin"

# Debian 11's apt state, kept apart from this machine's (its sources list, lists and cache of its own)
BULLSEYE=$CACHE/apt-bullseye
bullseye_apt() {
    mkdir -p "$BULLSEYE/lists/partial" "$BULLSEYE/cache/archives/partial"
    printf '%s\n' "deb http://deb.debian.org/debian bullseye main" \
        "deb http://deb.debian.org/debian-security bullseye-security main" > "$BULLSEYE/sources.list"
    local tool=$1
    shift
    "$tool" -o "Dir::Etc::SourceList=$BULLSEYE/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o "Dir::State::Lists=$BULLSEYE/lists" -o "Dir::Cache=$BULLSEYE/cache" "$@"
}

pkg=${1:-}
if [ "$pkg" = 5.10 ]; then
    bullseye_apt apt-get update -qq
    pkg=$(bullseye_apt apt-cache search --names-only '^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$' 2>/dev/null |
        awk '{print $1}' | sort -V | tail -1)
    [ -n "$pkg" ] || { echo "kernel-matrix: no linux-image-5.10.0-*-amd64-unsigned in Debian 11" >&2; exit 2; }
fi
if [ -z "$pkg" ]; then
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' | awk '{print $1}' |
        sort -V | tail -1)
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' | awk '{print $1}' |
            sort -V | tail -1)
    fi
    [ -n "$pkg" ] || { echo "kernel-matrix: no linux-image-6.1.0-*-amd64-unsigned package found" >&2; exit 2; }
fi
# A package of this machine's apt sources, else of Debian 11 (bullseye: its 5.10 kernels), through apt with
# a sources list of its own (signatures checked as usual; this machine's apt state untouched).
fetch_deb() {
    apt-get download -q "$1" 2>/dev/null && return 0
    bullseye_apt apt-get update -qq && bullseye_apt apt-get download -q "$1"
}
kdir=$CACHE/$pkg
if [ ! -d "$kdir/root/boot" ]; then
    echo "kernel-matrix: downloading $pkg"
    rm -rf "$kdir"
    mkdir -p "$kdir"
    (cd "$kdir" && fetch_deb "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    deb=$(ls "$kdir"/*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || { echo "kernel-matrix: could not download $pkg" >&2; exit 2; }
    dpkg-deb -x "$deb" "$kdir/root"
    rm -f "$deb"
fi
kimg=$(ls "$kdir"/root/boot/vmlinuz-* | head -1)
kver=${kimg##*/vmlinuz-}

accel=${KERNEL_MATRIX_ACCEL:-}
if [ -z "$accel" ]; then
    # /dev/kvm may exist and still not run a guest (nested virtualisation): boot once and look for the
    # kernel's first line on the serial console.
    accel=tcg
    if [ -w /dev/kvm ]; then
        probe=$(timeout 20 qemu-system-x86_64 -accel kvm -machine q35 -cpu host -display none -nodefaults \
            -no-reboot -m 256 -kernel "$kimg" -append "console=ttyS0 panic=-1" -serial stdio 2>/dev/null |
            grep -m1 -a "Linux version" || true)
        [ -n "$probe" ] && accel=kvm
    fi
fi
vng_accel=()
[ "$accel" = kvm ] || vng_accel=(--disable-kvm)

out=$CACHE/out-$kver
rm -rf "$out"
mkdir -p "$out"

# Through the daemon on the guest's kernel: the demo smoke (flow: / at 5 per second; isolation: /slow 2 at
# a time; requests sent by one curl so that they overlap even emulated), one sequence per other rule kind
# (hotspot, circuit breaker, system; counts, no rates), the framing suite (the stream judgment: socket
# lookup, split request lines, normalised targets), a first request on a SYN cookie's ACK and a forwarded
# SYN (bpf_tcp_check_syncookie, bpf_fib_lookup), SIGTERM cleanup, keep-alive 429, outbound connect()
# refusal, both tracers and doctor. The host's other integration tests time sequential clients against
# wall-clock rates that an emulated guest cannot reach; their rule kinds run in the dataplane tier here.
SMOKE=(
    tests/integration/test_rule_kinds.py
    tests/integration/test_daemon.py::test_sigterm_leaves_nothing
    tests/integration/test_inbound_reject.py::test_keep_alive_connection_gets_200_then_429
    tests/integration/test_outbound.py::test_flow_limit_refuses_excess_connects_fast
    tests/integration/test_trace.py::test_curl_connections_text_and_json
    "tests/integration/test_http_trace.py::test_records_match_what_the_client_sent_and_received[client-curl-nginx-http]"
    tests/integration/test_framing.py
    tests/integration/test_fragments.py
    "tests/integration/test_defer_accept.py::test_refused_first_requests_never_become_connections[deferred-syncookies]"
    tests/integration/test_forwarded.py
    tests/integration/test_doctor.py::test_doctor_reports_this_machine
)
if [ -n "${KERNEL_MATRIX_TESTS:-}" ]; then
    read -r -a TESTS <<< "$KERNEL_MATRIX_TESTS"
else
    # The LRU-pressure test makes 70,000 test runs: 8 s on the host, 220 s under emulation, and what it
    # checks (reconciliation after eviction) is no different on 6.1: the host tier runs it.
    TESTS=(tests/dataplane "${SMOKE[@]}"
           --deselect tests/dataplane/test_hardening.py::test_a_flood_that_evicts_in_flight_entries_is_repaired)
fi

# The guest: the demo's daemon path (run with no rules file: 200s and 429s from the built-in example),
# then pytest. Bytecode is not written (the checkout is read-only there).
cat > "$out/guest.sh" <<EOF
#!/bin/bash
set -u
cd "$ROOT"
export CI=${CI:-} PYTHONDONTWRITEBYTECODE=1 PATH="$ROOT/.venv/bin:\$PATH" SENTINEL_TEST_TIMEOUT_SCALE=\${SENTINEL_TEST_TIMEOUT_SCALE:-8}
echo "kernel: \$(uname -r)"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
ip link set lo up
if [ -n "${KERNEL_MATRIX_EXPECT_REFUSAL:-}" ]; then
    bash scripts/refusal-smoke.sh $(printf "%q" "${KERNEL_MATRIX_EXPECT_REFUSAL:-}") > "$out/demo.log" 2>&1
    echo \$? > "$out/demo.rc"
    echo "no tests: the enforcement programs are refused on this kernel" > "$out/pytest.log"
    echo 0 > "$out/pytest.rc"
    exit 0
fi
bash scripts/demo-smoke.sh > "$out/demo.log" 2>&1
echo \$? > "$out/demo.rc"
python -m pytest -p no:cacheprovider -q -o addopts="" -rfEs --durations=12 $(printf '%q ' "${TESTS[@]}") > "$out/pytest.log" 2>&1
echo \$? > "$out/pytest.rc"
EOF
chmod +x "$out/guest.sh"

if [ -n "${KERNEL_MATRIX_EXPECT_REFUSAL:-}" ]; then
    echo "kernel-matrix: booting $kver ($accel): run must be refused ('$KERNEL_MATRIX_EXPECT_REFUSAL')"
else
    echo "kernel-matrix: booting $kver ($accel) and running: ${TESTS[*]}"
fi
start=$(date +%s)
set +e
timeout 2400 vng --run "$kimg" "${vng_accel[@]}" -m 4G -p 2 \
    --rodir=/lib/modules="$kdir/root/lib/modules" --rwdir="$out" \
    --exec "bash $out/guest.sh > $out/guest.log 2>&1" > "$out/vng.log" 2>&1
vng_rc=$?
set -e
echo "kernel-matrix: guest ran for $(( $(date +%s) - start )) s"

cat "$out/guest.log" 2>/dev/null || true
if [ ! -f "$out/pytest.rc" ]; then
    echo "kernel-matrix: the guest did not finish (vng exit $vng_rc); last lines of its console:" >&2
    tail -30 "$out/vng.log" >&2
    exit 1
fi
demo_rc=$(cat "$out/demo.rc")
pytest_rc=$(cat "$out/pytest.rc")
echo "== demo smoke on $kver: exit $demo_rc"
[ "$demo_rc" = 0 ] && [ -z "${KERNEL_MATRIX_EXPECT_REFUSAL:-}" ] || cat "$out/demo.log"
echo "== pytest on $kver: exit $pytest_rc"
if [ "$pytest_rc" != 0 ]; then
    cat "$out/pytest.log"
else
    grep -E '^(FAILED|ERROR|SKIPPED)' "$out/pytest.log" || true
    # where the guest's time goes (the run must stay well inside the timeout above)
    sed -n '/slowest .* durations/,/^$/p' "$out/pytest.log"
    tail -1 "$out/pytest.log"
fi
[ "$demo_rc" = 0 ] || exit 1
exit "$pytest_rc"

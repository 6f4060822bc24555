#!/usr/bin/env bash
# Remove what an earlier, killed test run of THIS checkout left on the machine, by this project's naming
# (tests/support/netns.py, the cgroup fixtures, `sentinel-ebpf down`):
#   1. processes running this checkout's .venv (test daemons, tracers, servers, an orphaned pytest):
#      SIGTERM (daemons detach themselves), SIGKILL after 5 s;
#   2. network namespaces  <tag>-<pid hex><4 hex>-client|server  whose creating pid is gone (the processes
#      inside are killed first; their veth ends go with them), and root-namespace veths <tag><token>c|s;
#   3. cgroups  sentinel-it-<pid>-<hex> / sentinel-test-<pid>-<hex>  under the cgroup2 mount, pid gone;
#   4. TC filters with sentinel-ebpf's identity (handle 0x5e17, pref 0x5e17 = 24087) on root-namespace
#      interfaces, the same ones `sentinel-ebpf down` removes, and the clsact qdisc when nothing else is
#      left on it: only when no sentinel-ebpf daemon of any checkout runs in the root namespace;
#   5. the namespace pairs' temporary directories /tmp/<namespace>-*, pid gone.
# Anything whose creating pid still runs is left alone, so concurrent test runs are not disturbed.
#
# Usage: ci_cleanup.sh [--dry-run] [--only REGEX] [--tc-netns NS]
#   --dry-run     print what would be removed, change nothing
#   --only REGEX  consider only namespaces, veths, cgroups and directories whose name matches REGEX, and
#                 skip steps 1 and 4 (for testing on names one created)
#   --tc-netns NS run step 4 inside namespace NS instead of the root namespace (for testing)
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
ONLY=""
TC_NETNS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --only) ONLY=$2; shift ;;
        --tc-netns) TC_NETNS=$2; shift ;;
        *) echo "ci_cleanup.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
TC_PREF=24087
TC_HANDLE=0x5e17

act() {  # run (or, with --dry-run, print) a removal
    if [ "$DRY" = 1 ]; then echo "ci_cleanup: would run: $*"; else echo "ci_cleanup: $*"; "$@" || true; fi
}
selected() { [ -z "$ONLY" ] || [[ "$1" =~ $ONLY ]]; }
pid_gone() { [ -n "$1" ] && [ "$1" -gt 0 ] 2>/dev/null && [ ! -e "/proc/$1" ]; }
token_pid() { local t=$1; [ ${#t} -gt 4 ] && echo $((16#${t:0:${#t}-4})); }  # pid hex + 4 random hex

# 1. processes of this checkout's .venv (never this script or its ancestors)
if [ -z "$ONLY" ]; then
    keep=" $$ "
    p=$$
    while [ "$p" -gt 1 ] 2>/dev/null; do
        p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || echo 1)
        keep+="$p "
    done
    victims=()
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ "$keep" == *" $pid "* ]] && continue
        argv0=$(tr '\0' '\n' 2>/dev/null <"$d/cmdline" | head -n1) || continue
        [ -n "$argv0" ] || continue
        [[ "$argv0" == /* ]] || argv0=$(realpath -ms "$(readlink "$d/cwd" 2>/dev/null)/$argv0")
        [[ "$argv0" == "$REPO/.venv/"* ]] && victims+=("$pid")
    done
    if [ ${#victims[@]} -gt 0 ]; then
        act kill -TERM "${victims[@]}"
        if [ "$DRY" = 0 ]; then
            for _ in $(seq 50); do
                alive=()
                for pid in "${victims[@]}"; do [ -e "/proc/$pid" ] && alive+=("$pid"); done
                [ ${#alive[@]} -eq 0 ] && break
                sleep 0.1
            done
            [ ${#alive[@]} -gt 0 ] && act kill -KILL "${alive[@]}"
        fi
    fi
fi

# 2. namespaces of dead test processes, and stray root-namespace veths
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [[ "$ns" =~ ^[a-z]+-([0-9a-f]{5,})-(client|server)$ ]] || continue
    token=${BASH_REMATCH[1]}
    selected "$ns" && pid_gone "$(token_pid "$token")" || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do act kill -KILL "$pid"; done
    act ip netns del "$ns"
done
for ifname in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    [[ "$ifname" =~ ^[a-z]+([0-9a-f]{5,})[cs]$ ]] || continue
    token=${BASH_REMATCH[1]}
    selected "$ifname" && pid_gone "$(token_pid "$token")" || continue
    [ -e "/sys/class/net/$ifname" ] && act ip link del "$ifname"  # gone with its peer already?
done

# 3. test cgroups of dead test processes
CG=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
if [ -n "$CG" ]; then
    for dir in "$CG"/sentinel-it-* "$CG"/sentinel-test-*; do
        [ -d "$dir" ] || continue
        name=${dir##*/}
        [[ "$name" =~ ^sentinel-(it|test)-([0-9]+)-[0-9a-f]+$ ]] || continue
        pid=${BASH_REMATCH[2]}
        selected "$name" && pid_gone "$pid" || continue
        for pid in $(cat "$dir/cgroup.procs" 2>/dev/null); do act kill -KILL "$pid"; done
        [ "$DRY" = 0 ] && sleep 0.2
        act rmdir "$dir"
    done
fi

# 4. TC filters a killed daemon left (TC filters are not released with the process, BPF links are)
if [ -z "$ONLY" ] || [ -n "$TC_NETNS" ]; then
    inns() { if [ -n "$TC_NETNS" ]; then ip netns exec "$TC_NETNS" "$@"; else "$@"; fi; }
    me=$(readlink /proc/self/ns/net)
    [ -n "$TC_NETNS" ] && me=$(ip netns exec "$TC_NETNS" readlink /proc/self/ns/net)
    running=""
    for d in /proc/[0-9]*; do
        [ "$(readlink "$d/ns/net" 2>/dev/null)" = "$me" ] || continue
        args=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
        if [[ "$args" =~ sentinel[-_]ebpf[^\ ]*\ run( |$) ]]; then running="${d#/proc/} $running"; fi
    done
    if [ -n "$running" ]; then
        echo "ci_cleanup: sentinel-ebpf daemons run (pids $running): their TC filters are left alone"
    else
        for ifname in $(inns ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
            ours=0
            for dir in ingress egress; do
                if inns tc filter show dev "$ifname" "$dir" 2>/dev/null |
                    grep -q "pref $TC_PREF .*handle $TC_HANDLE"; then
                    act inns tc filter del dev "$ifname" "$dir" pref "$TC_PREF" handle "$TC_HANDLE" \
                        "$(inns tc filter show dev "$ifname" "$dir" | grep -o "pref $TC_PREF [a-z]*" | head -n1 | cut -d' ' -f3)"
                    ours=1
                fi
            done
            if [ "$ours" = 1 ] && [ "$DRY" = 0 ] &&
                [ -z "$(inns tc filter show dev "$ifname" ingress)$(inns tc filter show dev "$ifname" egress)" ]; then
                act inns tc qdisc del dev "$ifname" clsact
            fi
        done
    fi
fi

# 5. temporary directories of the namespace pairs
for dir in /tmp/*-*-client-*; do
    [ -d "$dir" ] || continue
    name=${dir##*/}
    [[ "$name" =~ ^[a-z]+-([0-9a-f]{5,})-client- ]] || continue
    token=${BASH_REMATCH[1]}
    selected "$name" && pid_gone "$(token_pid "$token")" || continue
    act rm -rf "$dir"
done
exit 0

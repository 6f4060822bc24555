# Sourced by demo.sh and demo-smoke.sh, so that the smoke check runs the daemon as the quick start does.
# start_daemon NAME: `$CLI run` on its built-in example in the background, in a new directory
# /tmp/sentinel-ebpf-NAME.XXXXXX ($work: state, metric log, daemon.log with its stderr), its control socket
# $sock, its pid $daemon; stop_daemon (also run on exit) stops it.
start_daemon() {
    work=$(mktemp -d "/tmp/sentinel-ebpf-$1.XXXXXX")
    sock="$work/control.sock"
    $CLI run --control-socket "$sock" --state-dir "$work/state" --log-dir "$work/log" --metrics-addr "" \
        2> "$work/daemon.log" &
    daemon=$!
    trap stop_daemon EXIT
}

stop_daemon() {
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
}

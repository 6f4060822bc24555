# Sourced by the scripts that need root: re-run the calling script with sudo when not root and sudo is
# there (a root shell in a container or VM needs neither); otherwise say how.
if [ "$(id -u)" != 0 ]; then
    if command -v sudo > /dev/null; then
        exec sudo -E bash "$0" "$@"
    fi
    echo "$(basename "$0"): run as root (apt-get and BPF need it), e.g. su -c 'bash $0'" >&2
    exit 1
fi

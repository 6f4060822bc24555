// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Tiny programs for `sentinel-ebpf doctor`: each is loaded (and attached where attaching is the real
 * test) on its own, so the verdict comes from this kernel's behaviour, not from its config.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe_tp_btf)
{
	return 0;
}

SEC("raw_tp/sys_enter")
int BPF_PROG(probe_raw_tp)
{
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(probe_uprobe)
{
	return 0;
}

SEC("kprobe/tcp_v4_connect")
int BPF_KPROBE(probe_kprobe)
{
	return 0;
}

SEC("fentry/tcp_v4_connect")
int BPF_PROG(probe_fentry)
{
	return 0;
}

SEC("lsm/socket_connect")
int BPF_PROG(probe_lsm, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	return ret;
}

SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	return 0; /* TC_ACT_OK */
}

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("cgroup/connect4")
int probe_connect4(struct bpf_sock_addr *ctx)
{
	return 1;
}

SEC("sockops")
int probe_sockops(struct bpf_sock_ops *ctx)
{
	return 1;
}

SEC("sk_msg")
int probe_sk_msg(struct sk_msg_md *msg)
{
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

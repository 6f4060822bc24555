/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Reading a socket's addresses and ports, shared by the tracers. Include after vmlinux.h and sentinel.h. */
#ifndef SENTINEL_SOCK_BPF_H
#define SENTINEL_SOCK_BPF_H

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/*
 * Family, local and remote port (host byte order) and addresses (network byte order, IPv4 in the first
 * 4 bytes) of a socket; false when it is neither IPv4 nor IPv6. The local port is read from inet_sock:
 * when a failed connect reaches CLOSE the port is already released (skc_num = 0) but inet_sport still
 * says which port the attempt used, as getsockname() does.
 */
static __always_inline bool fill_sock_tuple(__u16 *family, __u16 *sport, __u16 *dport, __u8 *saddr, __u8 *daddr,
					    const struct sock *sk)
{
	const struct inet_sock *inet = (const struct inet_sock *)sk;

	*family = BPF_CORE_READ(sk, __sk_common.skc_family);
	*sport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	*dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (*family == AF_INET) {
		bpf_core_read(saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(daddr, 4, &sk->__sk_common.skc_daddr);
		return true;
	}
	if (*family == AF_INET6) {
		bpf_core_read(saddr, SE_ADDR_LEN, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(daddr, SE_ADDR_LEN, &sk->__sk_common.skc_v6_daddr);
		return true;
	}
	return false;
}

/* Any event struct with family, sport, dport, saddr and daddr fields. */
#define FILL_TUPLE(e, sk) fill_sock_tuple(&(e)->family, &(e)->sport, &(e)->dport, (e)->saddr, (e)->daddr, (sk))

#endif /* SENTINEL_SOCK_BPF_H */

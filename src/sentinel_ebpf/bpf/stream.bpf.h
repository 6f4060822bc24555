/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Where a client's data segment stands in its connection's byte stream, from the local TCP stack itself:
 * the socket lookup says whether the connection exists here, and the established socket's rcv_nxt says
 * whether the segment's bytes were received (and so judged) already, come next, or lie beyond a gap.
 * Only bytes at rcv_nxt are judged: a retransmission is not judged twice, a segment of a connection that
 * does not exist (spoofed) spends nobody's quota, and a request cannot slip in out of order.
 */
#ifndef SENTINEL_STREAM_BPF_H
#define SENTINEL_STREAM_BPF_H

#include "parse.bpf.h"
#include "dataplane.bpf.h"

#define SE_PACKET_OTHERHOST 3 /* skb->pkt_type of a frame for another host's MAC (linux/if_packet.h) */

/* Set before load: 0 for tests that feed crafted packets of connections that do not exist. */
const volatile bool socket_lookup = true;

enum seg_position {
	SEG_NEXT = 0,       /* starts at rcv_nxt (or no lookup): judge it */
	SEG_OVERLAP = 1,    /* starts before rcv_nxt and goes beyond: judge the bytes from rcv_nxt on */
	SEG_HANDSHAKE = 2,  /* data of a pending handshake, or in a SYN (TFO): judge */
	SEG_OLD = 3,        /* every byte received already: a retransmission, judged when it first came */
	SEG_FUTURE = 4,     /* beyond a gap: dropped, so that it comes again in order and is judged then */
	SEG_NO_SOCKET = 5,  /* no connection here (spoofed, or closed): not judged; the stack answers it */
	SEG_REFUSED_KEPT = 6, /* bytes of the request last refused in the stream, sent again: its reply (or
			       * an acknowledgment of the part swallowed so far) was lost */
};

/* Sequence comparison modulo 2^32. */
static __always_inline bool seq_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

/*
 * The local socket of a connection, as a packet from its client names it (a reference the caller
 * releases), or NULL. `family` 4 or 6; addresses SE_ADDR_LEN bytes; ports in network byte order.
 */
static __always_inline struct bpf_sock *lookup_tuple(struct __sk_buff *skb, __u8 family, const __u8 *saddr,
						     const __u8 *daddr, __u16 sport, __u16 dport)
{
	struct bpf_sock_tuple t = {};
	__u32 size;

	if (family == 4) {
		__builtin_memcpy(&t.ipv4.saddr, saddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, daddr, 4);
		t.ipv4.sport = sport;
		t.ipv4.dport = dport;
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, daddr, 16);
		t.ipv6.sport = sport;
		t.ipv6.dport = dport;
		size = sizeof(t.ipv6);
	}
	return bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
}

/* The local socket of the connection `p` belongs to (a reference the caller releases), or NULL. */
static __always_inline struct bpf_sock *lookup_conn(struct __sk_buff *skb, const struct pkt *p)
{
	return lookup_tuple(skb, p->family, p->saddr, p->daddr, p->sport, p->dport);
}

/*
 * `p` is the client's ACK that completes the pending handshake `sk` (a request socket) as the stack will
 * accept it: it acknowledges the SYN-ACK and its data starts right after the client's SYN. Anything else
 * (a spoofed segment that guessed the addresses and ports of a half-open handshake) the stack drops or
 * answers with a reset, so it spends nobody's quota.
 */
static __always_inline bool completes_handshake(const struct pkt *p, struct bpf_sock *sk)
{
	struct tcp_request_sock *req = bpf_skc_to_tcp_request_sock(sk);

	return req && (p->flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_ACK && p->ack == req->snt_isn + 1 &&
	       p->seq == req->rcv_isn + 1;
}

/*
 * `p` is an ACK that carries a valid SYN cookie of the listener `sk`: the stack makes the connection from
 * it (a SYN flood, or tcp_syncookies=2, makes the listener answer SYNs with cookies and keep nothing).
 */
static __always_inline bool syncookie_ack(struct __sk_buff *skb, const struct pkt *p, struct bpf_sock *sk)
{
	__u32 zero = 0, ip_len = p->family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	union stream_scratch *scr;
	struct cookie_headers *h;

	if ((p->flags & (TCP_SYN | TCP_ACK | TCP_RST)) != TCP_ACK)
		return false;
	scr = bpf_map_lookup_elem(&stream_scratch, &zero);
	if (!scr)
		return false;
	h = &scr->cookie;
	if (bpf_skb_load_bytes(skb, p->l3_off, &h->ip, ip_len) ||
	    bpf_skb_load_bytes(skb, p->l4_off, &h->th, sizeof(h->th)))
		return false;
	return bpf_tcp_check_syncookie(sk, &h->ip, ip_len, &h->th, sizeof(h->th)) == 0;
}

/* The segment carries again bytes of the request last refused in the stream `xl` (NULL: none), alone or
 * merged with bytes around it: its reply (or, while it is swallowed, an acknowledgment) was lost. */
static __always_inline bool refused_again(const struct pkt *p, const struct seq_xlate *xl)
{
	__u32 start;

	if (!xl || xl->c_after == xl->c_before || !p->payload_len)
		return false;
	start = xl->c_pos - (xl->c_after - xl->c_before);
	return seq_before(p->seq, xl->c_pos) && seq_before(start, p->seq + p->payload_len);
}

/*
 * The segment's place in its stream (enum seg_position); *skip: how many of its payload bytes were
 * received already (SEG_OVERLAP). `xl`: the connection's translation (NULL: none); the segment is in the
 * client's numbering, the socket's rcv_nxt in the server's.
 */
static __always_inline int segment_position(struct __sk_buff *skb, const struct pkt *p, __u32 *skip,
					    const struct seq_xlate *xl, __u32 *seen)
{
	__u32 rcv_nxt, end = p->seq + p->payload_len;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	int pos = SEG_NEXT;

	*skip = 0;
	*seen = 0;
	if (!socket_lookup)
		return refused_again(p, xl) ? SEG_REFUSED_KEPT : SEG_NEXT;
	sk = lookup_conn(skb, p);
	if (!sk)
		return SEG_NO_SOCKET;
	if (sk->state == BPF_TCP_NEW_SYN_RECV) {
		/* data completing a pending handshake; a segment that does not fit it is spoofed */
		pos = completes_handshake(p, sk) ? SEG_HANDSHAKE : SEG_NO_SOCKET;
	} else if (sk->state == BPF_TCP_LISTEN && (p->flags & TCP_SYN)) {
		pos = SEG_HANDSHAKE; /* a SYN's data (TFO) */
	} else if (sk->state == BPF_TCP_LISTEN) {
		/* no handshake kept: data on an ACK with a valid SYN cookie makes the connection; anything
		 * else is spoofed and spends no quota */
		pos = syncookie_ack(skb, p, sk) ? SEG_HANDSHAKE : SEG_NO_SOCKET;
	} else if (sk->state != BPF_TCP_ESTABLISHED && sk->state != BPF_TCP_SYN_RECV) {
		/* (SYN_RECV: a TFO connection's socket, made at the SYN: its data is judged by rcv_nxt) */
		pos = SEG_NO_SOCKET; /* closing, or TIME_WAIT: nothing more goes to the application */
	} else if (refused_again(p, xl)) {
		pos = SEG_REFUSED_KEPT; /* (only while the connection is there: else spoofed, no reply) */
	} else if ((tp = bpf_skc_to_tcp_sock(sk))) {
		rcv_nxt = xl ? xl_server_ack(xl, tp->rcv_nxt) : tp->rcv_nxt;
		*seen = tp->bytes_received != 0;
		if (!seq_before(rcv_nxt, end)) {
			pos = SEG_OLD;
		} else if (seq_before(rcv_nxt, p->seq)) {
			pos = SEG_FUTURE;
		} else if (p->seq != rcv_nxt) {
			*skip = rcv_nxt - p->seq;
			pos = SEG_OVERLAP;
		}
	}
	bpf_sk_release(sk);
	return pos;
}

/*
 * The local stack has only a listener or a pending handshake for the connection `p` belongs to: a bare
 * ACK then completes the handshake (deferred accept drops it, so that the first request does).
 */
static __always_inline bool handshake_pending(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock *sk;
	bool pending;

	if (!socket_lookup)
		return false;
	sk = lookup_conn(skb, p);
	if (!sk)
		return false;
	pending = sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_NEW_SYN_RECV;
	bpf_sk_release(sk);
	return pending;
}

/*
 * The SYN `p` is addressed to this host, as its routing decides (a FIB lookup: the stack has not routed
 * the packet yet at TC ingress), so a SYN this host only forwards (its route goes elsewhere: a router,
 * a host for containers or VMs) or bridges (a frame for another host's MAC) is neither judged nor
 * answered. A host that does not forward on that device (the lookup says so before routing) receives
 * only its own traffic. Before DNAT: a port published to a container (DNAT on this host's address) is
 * this host's. Without lookups (crafted test packets): every SYN.
 */
static __always_inline bool syn_for_this_host(struct __sk_buff *skb, const struct pkt *p)
{
	union stream_scratch *scr;
	struct bpf_fib_lookup *f;
	__u32 zero = 0;
	long r;

	if (!socket_lookup)
		return true;
	if (skb->pkt_type == SE_PACKET_OTHERHOST)
		return false;
	scr = bpf_map_lookup_elem(&stream_scratch, &zero);
	if (!scr)
		return true;
	f = &scr->fib;
	__builtin_memset(f, 0, sizeof(*f));
	f->l4_protocol = IPPROTO_TCP;
	f->sport = p->sport;
	f->dport = p->dport;
	f->ifindex = skb->ingress_ifindex;
	if (p->family == 4) {
		f->family = 2; /* AF_INET */
		__builtin_memcpy(&f->ipv4_src, p->saddr, 4);
		__builtin_memcpy(&f->ipv4_dst, p->daddr, 4);
	} else {
		f->family = 10; /* AF_INET6 */
		__builtin_memcpy(f->ipv6_src, p->saddr, 16);
		__builtin_memcpy(f->ipv6_dst, p->daddr, 16);
	}
	r = bpf_fib_lookup(skb, f, sizeof(*f), 0);
	/* NOT_FWDED: a local (or broadcast) route; FWD_DISABLED: no forwarding here; an error (no such
	 * device): judged, as every SYN was before this check */
	return r == BPF_FIB_LKUP_RET_NOT_FWDED || r == BPF_FIB_LKUP_RET_FWD_DISABLED || r < 0;
}

/*
 * One more drop of the segment at `p->seq` for an incomplete request line: how many times it was dropped
 * (1 the first time), or 0 when the connection has no socket state to count in (then the caller's bound
 * cannot be reached: it keeps dropping, as the client keeps retransmitting).
 */
static __always_inline __u32 incomplete_try(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock *sk;
	struct conn_state *cs = NULL;
	struct bpf_sock *full;
	__u32 tries = 0;

	if (!socket_lookup)
		return 0;
	sk = lookup_conn(skb, p);
	if (!sk)
		return 0;
	full = bpf_sk_fullsock(sk);
	if (full)
		cs = bpf_sk_storage_get(&conn_state, full, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (cs) {
		if (cs->incomplete_seq != p->seq || !cs->incomplete_tries) {
			cs->incomplete_seq = p->seq;
			cs->incomplete_tries = 0;
		}
		tries = ++cs->incomplete_tries;
	}
	bpf_sk_release(sk);
	return tries;
}

#endif /* SENTINEL_STREAM_BPF_H */

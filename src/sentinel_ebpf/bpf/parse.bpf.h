/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Ethernet / IPv4 / IPv6 / TCP parsing for TC programs. Everything needed later is saved as values and
 * offsets: helpers that change the packet invalidate packet pointers. */
#ifndef SENTINEL_PARSE_BPF_H
#define SENTINEL_PARSE_BPF_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sentinel.h"

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define IPPROTO_TCP 6
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_DSTOPTS 60
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_TCP = 1,          /* not TCP over IP: none of our business */
	PARSE_MALFORMED = 2,        /* claims to be TCP/IP but headers are truncated or inconsistent */
	PARSE_FRAGMENT = 3,         /* an IP fragment: p->dport is its TCP port when it is the first, else 0 */
	PARSE_UNPARSED = 4,         /* VLAN tags go on past what is parsed */
	PARSE_V6_CHAIN = 5,         /* IPv6 extension headers go on past what is parsed (or are truncated): the
				     * protocol and ports are unknown */
};

struct pkt {
	__u32 l3_off;
	__u32 l4_off;
	__u32 payload_off;
	__u32 payload_len;
	__u32 seq;                  /* host byte order */
	__u32 ack;
	__u16 sport;                /* network byte order */
	__u16 dport;
	__u16 ip_len;               /* IPv4 total length / IPv6 payload length, host order */
	__u8 family;                /* 4 or 6 */
	__u8 flags;                 /* TCP flags byte */
	__u8 doff;                  /* TCP header length in bytes */
	__u8 saddr[SE_ADDR_LEN];
	__u8 daddr[SE_ADDR_LEN];
};

enum peek_result {
	PEEK_PORTS = 0,             /* *sport and *dport hold the TCP ports */
	PEEK_NOT_TCP = 1,           /* not TCP over IP: none of our business (parse_tcp agrees) */
	PEEK_PARSE = 2,             /* headers not all in the linear data, or suspect: parse_tcp decides */
};

static __always_inline bool is_ipv6_ext(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH ||
	       nh == IPPROTO_DSTOPTS;
}

/* ipv6_walk()'s result, beside the offset (<< 16) and the next header (low byte). */
#define IPV6_FIRST_FRAGMENT (1 << 8)
#define IPV6_WALK_FRAGMENT (-2)     /* a later fragment: no TCP header */
#define IPV6_WALK_UNPARSED (-1)     /* truncated, or more extension headers than SE_IPV6_EXT_MAX */

/*
 * Skip IPv6 extension headers from offset `off` (next header `nh`): returns the upper-layer header's
 * offset << 16 | IPV6_FIRST_FRAGMENT (when a fragment header says so) | its protocol, or IPV6_WALK_*.
 * A global function: the verifier checks its loop once.
 */
__noinline int ipv6_walk(struct __sk_buff *skb, __u32 off, __u32 nh)
{
	__u32 first_fragment = 0;

	if (!skb)
		return IPV6_WALK_UNPARSED;
	for (int i = 0; i < SE_IPV6_EXT_MAX; i++) {
		__u8 h[4];

		if (!is_ipv6_ext(nh))
			break;
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return IPV6_WALK_UNPARSED;
		if (nh == IPPROTO_FRAGMENT) {
			if ((h[2] << 8 | h[3]) & 0xFFF8)
				return IPV6_WALK_FRAGMENT;
			first_fragment = IPV6_FIRST_FRAGMENT;
			off += 8;
		} else if (nh == IPPROTO_AH) {
			off += (h[1] + 2) * 4;
		} else {
			off += (h[1] + 1) * 8;
		}
		nh = h[0];
	}
	if (is_ipv6_ext(nh) || off > 0x3fff)
		return IPV6_WALK_UNPARSED;
	return off << 16 | first_fragment | nh;
}

/*
 * The TCP ports of a frame, read in place without copying anything, so that a packet for a port nothing
 * protects costs a few loads. Anything unusual is left to parse_tcp, which also counts malformed headers.
 */
static __always_inline int peek_ports(struct __sk_buff *skb, __u16 *sport, __u16 *dport)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u16 *ports;

	if ((void *)(eth + 1) > data_end)
		return PEEK_PARSE;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return PEEK_PARSE;
		if (ip->protocol != IPPROTO_TCP)
			return PEEK_NOT_TCP;
		if (ip->frag_off & bpf_htons(0x3FFF))
			return PEEK_PARSE; /* a fragment: counted by parse_tcp */
		ports = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return PEEK_PARSE;
		if (ip6->nexthdr != IPPROTO_TCP)
			return is_ipv6_ext(ip6->nexthdr) ? PEEK_PARSE : PEEK_NOT_TCP;
		ports = (void *)(ip6 + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD)) {
		return PEEK_PARSE; /* VLAN tags: parse_tcp reads past them */
	} else {
		return PEEK_NOT_TCP;
	}
	if ((void *)(ports + 2) > data_end)
		return PEEK_PARSE;
	*sport = ports[0];
	*dport = ports[1];
	return PEEK_PORTS;
}

/*
 * Parse a frame's Ethernet, VLAN, IP and TCP headers into *p. Headers are read in the skb's linear data;
 * a driver (header split, a short copy of the headers) or a sender's large AF_PACKET frame can leave them
 * outside it, and such a packet must not pass as malformed, unjudged, for where its bytes lie: when a
 * header the packet holds is not in the linear data, it is pulled in (bpf_skb_pull_data, twice at most,
 * as far as the TCP header) and the frame parsed again. Packets whose headers are linear (nearly all) pay
 * nothing. (Called from a global function: see inbound.bpf.c's parse_into.)
 */
#define SE_PULL_LEN 128 /* bytes from the IP header pulled in at first: IPv4 with options, or IPv6, and TCP */

static __always_inline int parse_tcp(struct __sk_buff *skb, struct pkt *p)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct tcphdr *tcp;
	__u32 l3_off, l4_off, l3_len, want = 0, pulled = 0;
	__u16 proto;

	if (!skb || !p)
		return PARSE_NOT_TCP;
again:
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	l3_off = ETH_HLEN;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_TCP;
	proto = eth->h_proto;
	for (int i = 0; i < SE_VLAN_MAX; i++) {
		/* 802.1Q / QinQ tags the device did not take off (skb->vlan_tci holds an offloaded one) */
		__u16 *tag = data + l3_off;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(tag + 2) > data_end) {
			want = l3_off + SE_PULL_LEN;
			goto pull;
		}
		proto = tag[1];
		l3_off += 4;
	}
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return PARSE_UNPARSED;
	p->l3_off = l3_off;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l3_off;

		if ((void *)(ip + 1) > data_end) {
			want = l3_off + SE_PULL_LEN;
			goto pull;
		}
		if (ip->protocol != IPPROTO_TCP)
			return PARSE_NOT_TCP;
		if (ip->version != 4 || ip->ihl < 5)
			return PARSE_MALFORMED;
		if (ip->frag_off & bpf_htons(0x3FFF)) {
			/* a fragment: nothing judges it (the first one's ports say where it goes) */
			p->dport = 0;
			if (!(ip->frag_off & bpf_htons(0x1FFF)) &&
			    bpf_skb_load_bytes(skb, l3_off + ip->ihl * 4 + 2, &p->dport, sizeof(p->dport)))
				p->dport = 0;
			return PARSE_FRAGMENT;
		}
		p->family = 4;
		p->ip_len = bpf_ntohs(ip->tot_len);
		l4_off = l3_off + ip->ihl * 4;
		if (p->ip_len < ip->ihl * 4)
			return PARSE_MALFORMED;
		l3_len = p->ip_len - ip->ihl * 4;
		__builtin_memset(p->saddr, 0, sizeof(p->saddr));
		__builtin_memset(p->daddr, 0, sizeof(p->daddr));
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l3_off;
		__u32 ext_len = 0;

		if ((void *)(ip6 + 1) > data_end) {
			want = l3_off + SE_PULL_LEN;
			goto pull;
		}
		if (ip6->version != 6)
			return PARSE_MALFORMED; /* (the stack drops another version: it must not spend quota) */
		l4_off = l3_off + sizeof(*ip6);
		if (ip6->nexthdr != IPPROTO_TCP) {
			int w;

			if (!is_ipv6_ext(ip6->nexthdr))
				return PARSE_NOT_TCP;
			w = ipv6_walk(skb, l4_off, ip6->nexthdr);
			if (w == IPV6_WALK_FRAGMENT) {
				p->dport = 0;
				return PARSE_FRAGMENT;
			}
			if (w < 0)
				return PARSE_V6_CHAIN;
			if ((w & 0xff) != IPPROTO_TCP)
				return PARSE_NOT_TCP;
			ext_len = (__u32)w >> 16;
			asm volatile("" : "+r"(ext_len));
			ext_len &= 0x3fff; /* a bound the verifier sees (ipv6_walk returns no more) */
			ext_len -= l4_off;
			l4_off += ext_len;
			if (w & IPV6_FIRST_FRAGMENT) {
				if (bpf_skb_load_bytes(skb, l4_off + 2, &p->dport, sizeof(p->dport)))
					p->dport = 0;
				return PARSE_FRAGMENT;
			}
		}
		p->family = 6;
		p->ip_len = bpf_ntohs(ip6->payload_len);
		if (p->ip_len < ext_len)
			return PARSE_MALFORMED;
		l3_len = p->ip_len - ext_len;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
	} else {
		return PARSE_NOT_TCP;
	}

	tcp = data + l4_off;
	if ((void *)(tcp + 1) > data_end) {
		want = l4_off + sizeof(*tcp);
		goto pull;
	}
	p->doff = tcp->doff * 4;
	if (p->doff < sizeof(*tcp) || p->doff > l3_len)
		return PARSE_MALFORMED;
	p->l4_off = l4_off;
	p->payload_off = l4_off + p->doff;
	p->payload_len = l3_len - p->doff;
	if (p->payload_off + p->payload_len > skb->len)
		return PARSE_MALFORMED;
	p->sport = tcp->source;
	p->dport = tcp->dest;
	p->seq = bpf_ntohl(tcp->seq);
	p->ack = bpf_ntohl(tcp->ack_seq);
	p->flags = ((__u8 *)tcp)[13];
	return PARSE_OK;
pull:
	if (want > skb->len)
		want = skb->len;
	if (pulled >= 2 || bpf_skb_pull_data(skb, want))
		return PARSE_MALFORMED; /* truncated, or cannot be pulled in */
	pulled++; /* (twice at most: the IPv6 header, then the TCP header behind its extension headers) */
	goto again;
}

/* Bytes of `v` equal to `c`, as their high bits (exact for the lowest one: SWAR zero-byte test). */
static __always_inline __u64 bytes_equal_to(__u64 v, __u8 c)
{
	__u64 x = v ^ (0x0101010101010101ULL * c);

	return (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
}

/* Index of the lowest byte flagged by bytes_equal_to (mask != 0). */
static __always_inline __u32 lowest_flagged_byte(__u64 mask)
{
	/* isolate the lowest flag 1 << (8k + 7); the multiply puts k in the top byte */
	return (((mask & -mask) >> 7) * 0x0001020304050607ULL) >> 56;
}

#endif /* SENTINEL_PARSE_BPF_H */

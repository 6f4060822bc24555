/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Answering blocked traffic from TC ingress by rewriting the packet in place.
 *
 * Every checksum change goes through bpf_l4_csum_replace / bpf_l3_csum_replace (removed bytes as a
 * bpf_csum_diff delta, the TCP length with BPF_F_PSEUDO_HDR): correct whether the skb is
 * CHECKSUM_PARTIAL (loopback, local veth) or COMPLETE/NONE. A half-rewritten packet must go nowhere,
 * so callers drop the packet when a helper fails.
 */
#ifndef SENTINEL_REJECT_BPF_H
#define SENTINEL_REJECT_BPF_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.bpf.h"

#define CSUM_CHUNK 512
#define CSUM_MAX_CHUNKS 3 /* bytes removed from one segment: at most 1536 (else the caller drops) */

struct csum_scratch {
	__u8 buf[CSUM_CHUNK + 4];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_scratch);
} csum_scratch SEC(".maps");

/* Take bytes [off, off+len) out of the TCP checksum at csum_off. off must be 2-byte aligned within TCP. */
static __always_inline int csum_remove(struct __sk_buff *skb, __u32 csum_off, __u32 off, __u32 len)
{
	__u32 zero = 0;
	struct csum_scratch *s = bpf_map_lookup_elem(&csum_scratch, &zero);

	if (!s)
		return -1;
	for (int i = 0; i < CSUM_MAX_CHUNKS; i++) {
		__u32 n, n4;
		__s64 diff;

		if (len == 0)
			return 0;
		n = len > CSUM_CHUNK ? CSUM_CHUNK : len;
		n = ((n - 1) & (CSUM_CHUNK - 1)) + 1; /* same value; a range [1, 512] the verifier can see */
		n4 = (n + 3) & ~3U;
		*(__u32 *)&s->buf[n & ~3U] = 0; /* zero the padding up to n4 */
		if (bpf_skb_load_bytes(skb, off, s->buf, n))
			return -1;
		if (n4 > CSUM_CHUNK)
			return -1;
		diff = bpf_csum_diff((__be32 *)s->buf, n4, NULL, 0, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, 0))
			return -1;
		off += n;
		len -= n;
	}
	return len ? -1 : 0;
}

static __always_inline int store_csum32(struct __sk_buff *skb, __u32 csum_off, __u32 off, __u32 from, __u32 to)
{
	if (bpf_l4_csum_replace(skb, csum_off, from, to, sizeof(__u32)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

static __always_inline int store_csum16(struct __sk_buff *skb, __u32 csum_off, __u32 off, __u16 from, __u16 to)
{
	if (bpf_l4_csum_replace(skb, csum_off, from, to, sizeof(__u16)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

/* Swap MACs, addresses and ports: checksums are sums, so a swap changes none of them. */
static __always_inline int swap_endpoints(struct __sk_buff *skb, const struct pkt *p)
{
	__u8 macs[12], swapped[12];
	__u32 alen = p->family == 4 ? 4 : 16;
	__u32 src_off = p->l3_off + (p->family == 4 ? 12 : 8);

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)))
		return -1;
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0))
		return -1;
	if (alen == 4) {
		if (bpf_skb_store_bytes(skb, src_off, p->daddr, 4, 0) ||
		    bpf_skb_store_bytes(skb, src_off + 4, p->saddr, 4, 0))
			return -1;
	} else {
		if (bpf_skb_store_bytes(skb, src_off, p->daddr, 16, 0) ||
		    bpf_skb_store_bytes(skb, src_off + 16, p->saddr, 16, 0))
			return -1;
	}
	if (bpf_skb_store_bytes(skb, p->l4_off, &p->dport, 2, 0) ||
	    bpf_skb_store_bytes(skb, p->l4_off + 2, &p->sport, 2, 0))
		return -1;
	return 0;
}

/*
 * Turn the segment into a bare RST|ACK (no options, no payload) with the given seq/ack, optionally
 * addressed back to its sender. Lengths, flags and checksums are fixed; the skb is trimmed.
 */
static __always_inline int rewrite_to_rst(struct __sk_buff *skb, const struct pkt *p, __u32 seq, __u32 ack,
					  bool to_sender)
{
	__u32 csum_off = p->l4_off + 16;
	__u32 old_tcp_len = p->doff + p->payload_len;
	__u16 old_word, new_word;
	__u32 old_seq = bpf_htonl(p->seq), old_ack = bpf_htonl(p->ack);

	if (csum_remove(skb, csum_off, p->l4_off + 20, old_tcp_len - 20))
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4_off + 12, &old_word, 2))
		return -1;
	new_word = bpf_htons((5 << 12) | TCP_RST | TCP_ACK);
	if (store_csum16(skb, csum_off, p->l4_off + 12, old_word, new_word))
		return -1;
	if (store_csum32(skb, csum_off, p->l4_off + 4, old_seq, bpf_htonl(seq)) ||
	    store_csum32(skb, csum_off, p->l4_off + 8, old_ack, bpf_htonl(ack)))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, bpf_htons(old_tcp_len), bpf_htons(20),
				BPF_F_PSEUDO_HDR | sizeof(__u16)))
		return -1;
	if (p->family == 4) {
		__u16 old_tot = bpf_htons(p->ip_len);
		__u16 new_tot = bpf_htons(p->ip_len - old_tcp_len + 20);

		if (bpf_l3_csum_replace(skb, p->l3_off + 10, old_tot, new_tot, sizeof(__u16)) ||
		    bpf_skb_store_bytes(skb, p->l3_off + 2, &new_tot, 2, 0))
			return -1;
	} else {
		__u16 new_len = bpf_htons(20);

		if (bpf_skb_store_bytes(skb, p->l3_off + 4, &new_len, 2, 0))
			return -1;
	}
	if (to_sender && swap_endpoints(skb, p))
		return -1;
	return bpf_skb_change_tail(skb, p->l4_off + 20, 0);
}

/*
 * After rewrite_to_rst(..., to_sender=true) produced the RST for the client (seq = c_seq, ack = c_ack),
 * turn the same skb into the RST the server should see in place of the request (seq = request's seq).
 */
static __always_inline int rst_back_to_server(struct __sk_buff *skb, const struct pkt *p, __u32 c_seq, __u32 c_ack)
{
	__u32 csum_off = p->l4_off + 16;
	struct pkt swapped = *p;

	/* The skb now carries the client-bound addresses: swapping with the reversed view restores them. */
	__builtin_memcpy(swapped.saddr, p->daddr, sizeof(swapped.saddr));
	__builtin_memcpy(swapped.daddr, p->saddr, sizeof(swapped.daddr));
	swapped.sport = p->dport;
	swapped.dport = p->sport;
	if (swap_endpoints(skb, &swapped))
		return -1;
	if (store_csum32(skb, csum_off, p->l4_off + 4, bpf_htonl(c_seq), bpf_htonl(p->seq)) ||
	    store_csum32(skb, csum_off, p->l4_off + 8, bpf_htonl(c_ack), bpf_htonl(p->ack)))
		return -1;
	return 0;
}

#endif /* SENTINEL_REJECT_BPF_H */

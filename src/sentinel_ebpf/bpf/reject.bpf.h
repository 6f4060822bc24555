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
#include "dataplane.bpf.h"

#define CSUM_MAX_CHUNKS 128 /* bytes removed from one skb: at most 64 KiB (a GRO-merged one; else the caller drops) */

struct csum_ctx {
	struct __sk_buff *skb;
	struct csum_scratch *s;
	__u32 csum_off;
	__u32 off;
	__u32 len;                  /* bytes left to take out */
	int err;
};

/* One chunk of csum_remove (a bpf_loop callback: verified once, however many chunks). */
static long csum_chunk(__u32 i, struct csum_ctx *c)
{
	struct csum_scratch *s = c->s;
	__u32 n, n4;
	__s64 diff;

	if (c->len == 0)
		return 1;
	n = c->len > CSUM_CHUNK ? CSUM_CHUNK : c->len;
	n = ((n - 1) & (CSUM_CHUNK - 1)) + 1; /* same value; a range [1, 512] the verifier can see */
	n4 = (n + 3) & ~3U;
	*(__u32 *)&s->buf[n & ~3U] = 0; /* zero the padding up to n4 */
	if (bpf_skb_load_bytes(c->skb, c->off, s->buf, n) || n4 > CSUM_CHUNK)
		goto fail;
	diff = bpf_csum_diff((__be32 *)s->buf, n4, NULL, 0, 0);
	if (diff < 0 || bpf_l4_csum_replace(c->skb, c->csum_off, 0, diff, 0))
		goto fail;
	c->off += n;
	c->len -= n;
	return 0;
fail:
	c->err = 1;
	return 1;
}

/*
 * Take bytes [off, off+len) out of the TCP checksum at csum_off. off must be 2-byte aligned within TCP.
 * A global function: the verifier checks it once, not once per path that calls it.
 */
static __always_inline int csum_remove(struct __sk_buff *skb, __u32 csum_off, __u32 off, __u32 len)
{
	__u32 zero = 0;
	struct csum_ctx c = { .skb = skb, .csum_off = csum_off, .off = off, .len = len };

	c.s = bpf_map_lookup_elem(&csum_scratch, &zero);
	if (!skb || !c.s)
		return -1;
	bpf_loop(CSUM_MAX_CHUNKS, csum_chunk, &c, 0);
	return c.err || c.len ? -1 : 0;
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

/* Set the IP header's length field to `len`: IPv4 total length (header checksum fixed), IPv6 payload length. */
static __always_inline int set_ip_len(struct __sk_buff *skb, const struct pkt *p, __u32 len)
{
	__u16 old_len = bpf_htons(p->ip_len), new_len = bpf_htons(len);

	if (p->family == 4)
		return bpf_l3_csum_replace(skb, p->l3_off + 10, old_len, new_len, sizeof(__u16)) ||
			       bpf_skb_store_bytes(skb, p->l3_off + 2, &new_len, 2, 0)
			   ? -1
			   : 0;
	return bpf_skb_store_bytes(skb, p->l3_off + 4, &new_len, 2, 0) ? -1 : 0;
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

#define TO_SENDER 1                /* rewrite_to_rst: addressed back to the segment's sender */
#define BARE_ACK 2                 /* ... a bare ACK rather than a RST */

/*
 * Turn the segment into a bare RST|ACK (no options, no payload) with the given seq/ack, addressed back to
 * its sender with TO_SENDER; a bare ACK with BARE_ACK. Lengths, flags and checksums are fixed; the skb
 * is trimmed.
 */
__noinline int rewrite_to_rst(struct __sk_buff *skb, const struct pkt *p, __u32 seq, __u32 ack, __u32 how)
{
	if (!skb || !p)
		return -1;
	__u32 csum_off = p->l4_off + 16;
	__u32 old_tcp_len = p->doff + p->payload_len;
	__u16 old_word, new_word;
	__u32 old_seq = bpf_htonl(p->seq), old_ack = bpf_htonl(p->ack);

	if (csum_remove(skb, csum_off, p->l4_off + 20, old_tcp_len - 20))
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4_off + 12, &old_word, 2))
		return -1;
	new_word = bpf_htons((5 << 12) | ((how & BARE_ACK) ? 0 : TCP_RST) | TCP_ACK);
	if (store_csum16(skb, csum_off, p->l4_off + 12, old_word, new_word))
		return -1;
	if (store_csum32(skb, csum_off, p->l4_off + 4, old_seq, bpf_htonl(seq)) ||
	    store_csum32(skb, csum_off, p->l4_off + 8, old_ack, bpf_htonl(ack)))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, bpf_htons(old_tcp_len), bpf_htons(20),
				BPF_F_PSEUDO_HDR | sizeof(__u16)))
		return -1;
	if (set_ip_len(skb, p, p->ip_len - old_tcp_len + 20))
		return -1;
	if ((how & TO_SENDER) && swap_endpoints(skb, p))
		return -1;
	return bpf_skb_change_tail(skb, p->l4_off + 20, 0);
}

/*
 * After rewrite_to_rst(..., TO_SENDER) produced the RST for the client (seq = c_seq, ack = c_ack),
 * turn the same skb into the RST the server should see in place of the request (seq = request's seq,
 * ack = the request's ack, both as the server counts them).
 */
static __always_inline int rst_back_to_server(struct __sk_buff *skb, const struct pkt *p, __u32 c_seq, __u32 c_ack,
					      __u32 s_seq, __u32 s_ack)
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
	if (store_csum32(skb, csum_off, p->l4_off + 4, bpf_htonl(c_seq), bpf_htonl(s_seq)) ||
	    store_csum32(skb, csum_off, p->l4_off + 8, bpf_htonl(c_ack), bpf_htonl(s_ack)))
		return -1;
	return 0;
}

/*
 * Offset of the TCP timestamp option's value bytes (tsval, tsecr): 0 when the segment has no options,
 * -1 when it has options in a layout other than the ones TCP stacks send on data segments
 * (NOP NOP TS, or TS first); the caller then answers with RST rather than risk a reply PAWS would drop.
 */
__noinline int find_timestamps(struct __sk_buff *skb, __u32 l4_off, __u32 doff)
{
	__u8 o[4];

	if (!skb || doff <= 20)
		return 0;
	if (doff < 32 || bpf_skb_load_bytes(skb, l4_off + 20, o, sizeof(o)))
		return -1;
	if (o[0] == 1 && o[1] == 1 && o[2] == 8 && o[3] == 10)
		return l4_off + 24;
	if (o[0] == 8 && o[1] == 10)
		return l4_off + 22;
	return -1;
}

/* Swap tsval and tsecr so the reply echoes the client's clock (else PAWS drops it). A swap of two
 * 32-bit words changes no checksum, wherever they sit. */
static __always_inline int swap_timestamps(struct __sk_buff *skb, int ts_off)
{
	__u32 ts[2], swapped[2];

	if (!ts_off)
		return 0;
	if (bpf_skb_load_bytes(skb, ts_off, ts, sizeof(ts)))
		return -1;
	swapped[0] = ts[1];
	swapped[1] = ts[0];
	return bpf_skb_store_bytes(skb, ts_off, swapped, sizeof(swapped), 0);
}

/*
 * The headers of a segment whose payload is now `rlen` bytes, turned toward the client: `flags` (the data
 * offset kept), seq = the segment's ack, ack = its seq + `acked`, lengths and checksums fixed, timestamps
 * swapped (else PAWS drops it), addresses and ports swapped.
 */
static __always_inline int headers_to_client(struct __sk_buff *skb, const struct pkt *p, int ts_off, __u32 acked,
					     __u16 flags, __u32 rlen)
{
	__u32 csum_off = p->l4_off + 16;
	__u16 old_word, new_word;

	if (bpf_skb_load_bytes(skb, p->l4_off + 12, &old_word, 2))
		return -1;
	new_word = (old_word & bpf_htons(0xF000)) | bpf_htons(flags);
	if (store_csum16(skb, csum_off, p->l4_off + 12, old_word, new_word))
		return -1;
	if (store_csum32(skb, csum_off, p->l4_off + 4, bpf_htonl(p->seq), bpf_htonl(p->ack)) ||
	    store_csum32(skb, csum_off, p->l4_off + 8, bpf_htonl(p->ack), bpf_htonl(p->seq + acked)))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, bpf_htons(p->doff + p->payload_len), bpf_htons(p->doff + rlen),
				BPF_F_PSEUDO_HDR | sizeof(__u16)))
		return -1;
	if (set_ip_len(skb, p, p->ip_len - p->payload_len + rlen))
		return -1;
	if (swap_timestamps(skb, ts_off))
		return -1;
	return swap_endpoints(skb, p);
}

/*
 * Turn the request segment into the HTTP response for its client: payload replaced by `reply`,
 * addresses swapped, seq = request's ack, ack = request's seq + `acked` (the request's bytes answered),
 * PSH|ACK and FIN when `fin`, timestamps swapped.
 */
__noinline int rewrite_to_reply(struct __sk_buff *skb, const struct pkt *p, const struct http_reply *reply,
				__u32 acked, __u32 fin)
{
	if (!skb || !p || !reply)
		return -1;
	__u32 csum_off = p->l4_off + 16;
	__u32 rlen = reply->len, rlen4;
	__s64 add;
	int ts_off = find_timestamps(skb, p->l4_off, p->doff);

	if (ts_off < 0 || rlen == 0 || rlen > SE_HTTP_REPLY_MAX)
		return -1;
	rlen = ((rlen - 1) & (SE_HTTP_REPLY_MAX - 1)) + 1;
	rlen4 = (rlen + 3) & ~3U;
	if (rlen4 > SE_HTTP_REPLY_MAX)
		return -1;
	if (csum_remove(skb, csum_off, p->payload_off, p->payload_len))
		return -1;
	if (bpf_skb_change_tail(skb, p->payload_off + rlen, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, p->payload_off, reply->data, rlen, 0))
		return -1;
	add = bpf_csum_diff(NULL, 0, (__be32 *)reply->data, rlen4, 0);
	if (add < 0 || bpf_l4_csum_replace(skb, csum_off, 0, add, 0))
		return -1;
	return headers_to_client(skb, p, ts_off, acked, (fin ? TCP_FIN : 0) | TCP_PSH | TCP_ACK, rlen);
}

/*
 * Turn the client's segment into the acknowledgment its server would send: no payload, ACK alone,
 * seq = the segment's ack, ack = its seq + `acked` (for bytes swallowed in the server's place: the server
 * never gets them). A global function.
 */
__noinline int rewrite_to_ack(struct __sk_buff *skb, const struct pkt *p, __u32 acked)
{
	if (!skb || !p)
		return -1;
	int ts_off = find_timestamps(skb, p->l4_off, p->doff);

	if (ts_off < 0)
		return -1;
	if (p->payload_len && csum_remove(skb, p->l4_off + 16, p->payload_off, p->payload_len))
		return -1;
	if (bpf_skb_change_tail(skb, p->payload_off, 0))
		return -1;
	return headers_to_client(skb, p, ts_off, acked, TCP_ACK, 0);
}

/*
 * Keep the segment's first `keep` payload bytes (0 < keep < payload_len) and drop the rest, and its FIN
 * (the client's TCP sends the rest again: the ACK covers only what is kept). Any cut point: the TCP
 * checksum is a sum of 16-bit words, so from an odd one the byte before it is taken out with the rest and
 * added back as the high byte of the last word.
 */
__noinline int trim_payload(struct __sk_buff *skb, const struct pkt *p, __u32 keep)
{
	if (!skb || !p || keep == 0 || keep >= p->payload_len)
		return -1;
	__u32 csum_off = p->l4_off + 16;
	__u32 cut = p->payload_off + keep;
	__u32 odd = (cut - p->l4_off) & 1;
	__u16 old_word, new_word;

	if (csum_remove(skb, csum_off, cut - odd, p->payload_len - keep + odd))
		return -1;
	if (odd) {
		__u32 last = 0;
		__s64 add;

		if (bpf_skb_load_bytes(skb, cut - 1, &last, 1))
			return -1;
		add = bpf_csum_diff(NULL, 0, &last, sizeof(last), 0);
		if (add < 0 || bpf_l4_csum_replace(skb, csum_off, 0, add, 0))
			return -1;
	}
	if (p->flags & TCP_FIN) {
		if (bpf_skb_load_bytes(skb, p->l4_off + 12, &old_word, 2))
			return -1;
		new_word = old_word & ~bpf_htons(TCP_FIN);
		if (store_csum16(skb, csum_off, p->l4_off + 12, old_word, new_word))
			return -1;
	}
	if (bpf_l4_csum_replace(skb, csum_off, bpf_htons(p->doff + p->payload_len), bpf_htons(p->doff + keep),
				BPF_F_PSEUDO_HDR | sizeof(__u16)))
		return -1;
	if (set_ip_len(skb, p, p->ip_len - p->payload_len + keep))
		return -1;
	return bpf_skb_change_tail(skb, cut, 0);
}

/* What the skb holds after rewrite_to_reply, described as a parsed packet (for rewrite_to_rst). */
static __always_inline void reply_view(struct pkt *r, const struct pkt *p, __u32 rlen)
{
	*r = *p;
	__builtin_memcpy(r->saddr, p->daddr, sizeof(r->saddr));
	__builtin_memcpy(r->daddr, p->saddr, sizeof(r->daddr));
	r->sport = p->dport;
	r->dport = p->sport;
	r->seq = p->ack;
	r->ack = p->seq + p->payload_len;
	r->payload_len = rlen;
	r->ip_len = p->ip_len - p->payload_len + rlen;
	r->flags = TCP_FIN | TCP_PSH | TCP_ACK;
}

#endif /* SENTINEL_REJECT_BPF_H */

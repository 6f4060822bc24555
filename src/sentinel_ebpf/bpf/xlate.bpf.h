/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Sequence translation of a connection that had a request refused in its stream: the client got the
 * kernel's reply (bytes the server never sent) and the server never got the request (bytes the client
 * did send). From then on the two ends count different streams: client -> server segments carry
 * seq - (client bytes swallowed) and ack - (reply bytes put in), server -> client segments the reverse,
 * SACK blocks like the acknowledgments they sit beside. As netfilter's seqadj does, each direction keeps
 * the last correction's position with the offsets before and after it, so that a late segment from
 * before the last refusal is translated right. A refused request whose head (or body) goes on past its
 * segment is swallowed to its end, its segments acknowledged in the server's place (the client's TCP,
 * often held to a congestion window of one or two segments, sends the rest of a request only once the
 * first part is acknowledged), and answered where it ends.
 */
#ifndef SENTINEL_XLATE_BPF_H
#define SENTINEL_XLATE_BPF_H

#include "parse.bpf.h"
#include "reject.bpf.h"
#include "dataplane.bpf.h"

static __always_inline bool xl_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

/* A client sequence number (client's numbering) as the server counts it. */
static __always_inline __u32 xl_client_seq(const struct seq_xlate *x, __u32 seq)
{
	return seq - (xl_before(seq, x->c_pos) ? x->c_before : x->c_after);
}

/* A server position the client acknowledges (client's numbering) as the server counts it: inside a reply
 * that was put in, the reply's place. */
static __always_inline __u32 xl_client_ack(const struct seq_xlate *x, __u32 ack)
{
	if (!xl_before(ack, x->s_pos + x->s_after))
		return ack - x->s_after;
	if (!xl_before(ack, x->s_pos + x->s_before))
		return x->s_pos;
	return ack - x->s_before;
}

/* A server sequence number as the client counts it. */
static __always_inline __u32 xl_server_seq(const struct seq_xlate *x, __u32 seq)
{
	return seq + (xl_before(seq, x->s_pos) ? x->s_before : x->s_after);
}

/* A client position the server acknowledges (server's numbering) as the client counts it. */
static __always_inline __u32 xl_server_ack(const struct seq_xlate *x, __u32 ack)
{
	return ack + (xl_before(ack, x->c_pos - x->c_after) ? x->c_before : x->c_after);
}

/* Where the SACK option's blocks are (offset of the first edge) and how many, or 0 blocks. */
struct sack_at {
	__u32 off;
	__u32 blocks;
};

struct opt_ctx {
	struct __sk_buff *skb;
	__u32 off;                 /* next option's offset in the skb */
	__u32 end;                 /* the options' end */
	struct sack_at *found;
};

/* One TCP option (a bpf_loop callback: verified once). */
static long opt_step(__u32 i, struct opt_ctx *c)
{
	__u8 kind_len[2];

	if (c->off >= c->end || bpf_skb_load_bytes(c->skb, c->off, kind_len, 1))
		return 1;
	if (kind_len[0] == 0)
		return 1; /* end of options */
	if (kind_len[0] == 1) {
		c->off++;
		return 0;
	}
	if (c->off + 2 > c->end || bpf_skb_load_bytes(c->skb, c->off, kind_len, 2) || kind_len[1] < 2)
		return 1;
	if (kind_len[0] == 5 && kind_len[1] >= 10 && (kind_len[1] - 2) % 8 == 0 && c->off + kind_len[1] <= c->end) {
		c->found->off = c->off + 2;
		c->found->blocks = (kind_len[1] - 2) / 8;
		return 1;
	}
	c->off += kind_len[1];
	return 0;
}

/* Where the segment's SACK option has its blocks (s->blocks 0: none). */
static __always_inline int find_sack(struct __sk_buff *skb, const struct pkt *p, struct sack_at *s)
{
	struct opt_ctx c = { .skb = skb, .off = p->l4_off + 20, .end = p->l4_off + p->doff, .found = s };

	s->off = 0;
	s->blocks = 0;
	if (p->doff <= 20)
		return 0;
	bpf_loop(40, opt_step, &c, 0);
	return 0;
}

/* Rewrite a 32-bit sequence field at `off` from `from` to `to` (host order), checksum fixed. */
static __always_inline int xl_store(struct __sk_buff *skb, const struct pkt *p, __u32 off, __u32 from, __u32 to)
{
	if (from == to)
		return 0;
	return store_csum32(skb, p->l4_off + 16, off, bpf_htonl(from), bpf_htonl(to));
}

/*
 * Translate a segment of the connection: `to_server` for the client's segments (client numbering to the
 * server's), else the server's. Sequence number, acknowledgment (when ACK is set) and every SACK edge.
 * 0, or -1 when a helper failed (the caller drops the packet: a half-translated one must go nowhere).
 * A global function.
 */
__noinline int xlate_segment(struct __sk_buff *skb, const struct pkt *p, const struct seq_xlate *x, __u32 to_server)
{
	struct sack_at s;
	__u32 seq, ack;

	if (!skb || !p || !x)
		return -1;
	seq = to_server ? xl_client_seq(x, p->seq) : xl_server_seq(x, p->seq);
	if (xl_store(skb, p, p->l4_off + 4, p->seq, seq))
		return -1;
	if (!(p->flags & TCP_ACK))
		return 0;
	ack = to_server ? xl_client_ack(x, p->ack) : xl_server_ack(x, p->ack);
	if (xl_store(skb, p, p->l4_off + 8, p->ack, ack))
		return -1;
	find_sack(skb, p, &s);
	for (__u32 k = 0; k < 8; k++) {
		__u32 edge, moved;

		if (k >= s.blocks * 2)
			break;
		if (bpf_skb_load_bytes(skb, s.off + k * 4, &edge, 4))
			return -1;
		edge = bpf_ntohl(edge);
		moved = to_server ? xl_client_ack(x, edge) : xl_server_ack(x, edge);
		if (xl_store(skb, p, s.off + k * 4, edge, moved))
			return -1;
	}
	return 0;
}

#endif /* SENTINEL_XLATE_BPF_H */

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Answering what was refused the closing way (reject(): the reply with Connection: close or a RST to
 * the client, a RST to the server in the request's place), and an outbound response's completion.
 * Part of inbound.bpf.c (one BPF object): included there after the maps and scratch it uses, not on its
 * own.
 */
#ifndef SENTINEL_REFUSE_BPF_H
#define SENTINEL_REFUSE_BPF_H

/* Ingress from a server of outbound HTTP resources: the status line completes the local caller's request. */
static __always_inline void out_response(struct __sk_buff *skb, const struct pkt *p, struct flow_key *fk)
{
	__u8 hundreds;

	make_key(fk, p, false, FLOW_KIND_OUT_REQUEST);
	if (p->flags & (TCP_RST | TCP_FIN)) {
		complete(COMPLETE_ERROR | COMPLETE_END); /* the server closed without answering */
		return;
	}
	if (p->payload_len && status_line(skb, p, &hundreds))
		complete(hundreds == '5' ? COMPLETE_ERROR : 0);
}

/* Send a copy of the skb (a reply or a reset) out of its device, marked as the programs' own. */
static __always_inline long clone_marked(struct __sk_buff *skb, __u32 flags)
{
	__u32 mark = skb->mark;
	long r;

	skb->mark = SE_REPLY_MARK;
	r = bpf_clone_redirect(skb, skb->ifindex, flags);
	skb->mark = mark;
	return r;
}

/* The translation of the outbound connection in egress scratch fk (out_request's key), or NULL. */
static __always_inline struct seq_xlate *out_xl(struct ingress_scratch *scr)
{
	struct stream_state *e = bpf_map_lookup_elem(&streams, &scr->fk);

	return e && e->xl_on ? &e->xl : NULL;
}

/* reject()'s third argument: enum reject_mode | REJECT_* flags. */
#define REJECT_SYN (1 << 8)
#define REJECT_GEN1 (1 << 9)
#define REJECT_OUTBOUND (1 << 10)

#define SE_LOOPBACK_IFINDEX 1 /* lo, in every network namespace */

/*
 * Answer a blocked request or SYN. Inbound (TC ingress): the reply goes back out of the device to the
 * client and the server gets a RST in place of the request. Outbound (TC egress, REJECT_OUTBOUND): the
 * reply is cloned into the device's ingress so the local caller receives it, and the RST goes on to the
 * server; on loopback the reply is sent out of lo instead, as every packet to a local socket is: a packet
 * injected at lo's ingress has lost its route, and the stack drops one with loopback addresses as a
 * martian (route_localnet is off), while the clone sent out keeps the request's local route (which
 * delivers to this host) and comes back in to the caller. A global function (the slow path): its frame is
 * not on the stack of the checks.
 */
__noinline int reject(struct __sk_buff *skb, const struct pkt *p, __u32 how)
{
	__u8 mode = how & 0xff, gen = !!(how & REJECT_GEN1);
	bool syn = how & REJECT_SYN, outbound = how & REJECT_OUTBOUND;
	__u32 clone_flags = outbound && skb && skb->ifindex != SE_LOOPBACK_IFINDEX ? BPF_F_INGRESS : 0, zero = 0;
	__u32 s_seq, s_ack;
	struct ingress_scratch *scr;
	struct seq_xlate *xl;

	if (!skb || !p)
		return TC_ACT_OK;

	if (mode == REJECT_DROP || (p->family == 6 && p->l4_off != p->l3_off + 40))
		return TC_ACT_SHOT; /* a reply would carry IPv6 extension headers (a routing header!) back: drop */
	if (syn) {
		/* RST|ACK for the SYN: seq 0, ack = ISN + 1 (+ its data, TFO); the SYN never reaches the server */
		if (rewrite_to_rst(skb, p, 0, p->seq + 1 + p->payload_len, TO_SENDER))
			goto fail;
		percpu_inc(&dp_counters, DP_RST_SENT);
		return bpf_redirect(skb->ifindex, 0);
	}
	if (mode == REJECT_HTTP_REPLY && p->payload_len <= SE_REPLY_REQUEST_MAX &&
	    find_timestamps(skb, p->l4_off, p->doff) >= 0) {
		__u32 idx = (outbound ? HTTP_REPLY_OUTBOUND : 0) + gen;
		struct http_reply *reply = bpf_map_lookup_elem(&http_reply, &idx);

		scr = bpf_map_lookup_elem(outbound ? (void *)&egress_scratch : (void *)&ingress_scratch, &zero);
		if (!reply || !reply->len || !scr)
			goto rst;
		/* The response goes out toward the client; the same skb then becomes the RST the server
		 * sees in place of the request (seq = the request's seq exactly, or both sides desync;
		 * in the server's numbering when the connection is translated). Everything read from
		 * scratch is read before the clone: on lo the clone is sent out of lo, and the egress
		 * program runs on it at once, nested, over egress scratch. */
		reply_view(&scr->reply, p, reply->len);
		s_seq = p->seq;
		s_ack = p->ack;
		xl = outbound ? out_xl(scr) : (scr->xl_on ? &scr->xl : NULL);
		if (xl) {
			s_seq = xl_client_seq(xl, s_seq);
			s_ack = xl_client_ack(xl, s_ack);
		}
		if (rewrite_to_reply(skb, p, reply, p->payload_len, 1))
			goto fail;
		if (clone_marked(skb, clone_flags))
			goto fail;
		scr->xl_on = 0; /* written in the server's numbering already */
		if (rewrite_to_rst(skb, &scr->reply, s_seq, s_ack, TO_SENDER))
			goto fail;
		percpu_inc(&dp_counters, DP_REPLY_SENT);
		return TC_ACT_OK;
	}
rst:;
	/* RST to the client (seq = what it expects next), then the same skb as RST to the server in
	 * place of the request. */
	__u32 c_seq = p->ack, c_ack = p->seq + p->payload_len;

	s_seq = p->seq + (how >> 16);
	s_ack = p->ack;
	scr = bpf_map_lookup_elem(outbound ? (void *)&egress_scratch : (void *)&ingress_scratch, &zero);
	if (!scr)
		goto fail;
	xl = outbound ? out_xl(scr) : (scr->xl_on ? &scr->xl : NULL);
	if (xl) {
		s_seq = xl_client_seq(xl, s_seq);
		s_ack = xl_client_ack(xl, s_ack);
	}
	scr->reply = *p; /* (scratch p is not read after the clone: see above) */
	if (rewrite_to_rst(skb, p, c_seq, c_ack, TO_SENDER))
		goto fail;
	if (clone_marked(skb, clone_flags))
		goto fail;
	scr->xl_on = 0;
	if (rst_back_to_server(skb, &scr->reply, c_seq, c_ack, s_seq, s_ack))
		goto fail;
	percpu_inc(&dp_counters, DP_RST_SENT);
	return TC_ACT_OK;
fail:
	/* a half-rewritten packet must go nowhere */
	percpu_inc(&dp_counters, DP_REPLY_FAILED);
	return TC_ACT_SHOT;
}

#endif /* SENTINEL_REFUSE_BPF_H */

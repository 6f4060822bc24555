/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * A refused request answered in its connection's stream, the connection kept (reply_in_stream,
 * swallowing a refused request's rest), the translation of the connection's segments from then on,
 * and the choice between that and the closing answer (refuse_http).
 * Part of inbound.bpf.c (one BPF object): included there after the maps and scratch it uses, not on its
 * own.
 */
#ifndef SENTINEL_KEEPALIVE_BPF_H
#define SENTINEL_KEEPALIVE_BPF_H

/* A packet's translation flag starts cleared: only its own path sets it (scratch outlives the packet). */
static __always_inline void xl_clear(bool egress)
{
	__u32 zero = 0;
	struct ingress_scratch *scr =
		bpf_map_lookup_elem(egress ? (void *)&egress_scratch : (void *)&ingress_scratch, &zero);

	if (scr)
		scr->xl_on = 0;
}

/* The packet's translation flag: 0, 1 (a protected port's connection), XL_OUTBOUND. */
static __always_inline __u32 xl_state(bool egress)
{
	__u32 zero = 0;
	struct ingress_scratch *scr =
		bpf_map_lookup_elem(egress ? (void *)&egress_scratch : (void *)&ingress_scratch, &zero);

	return scr ? scr->xl_on : 0;
}

/*
 * The client's segment belongs to a connection that had a request refused in its stream: its translation
 * into scratch xl (xl_on), for segment_position, reject() and xlate_to_server(). A SYN starts a new
 * connection on the same ports: the old one's state goes. A global function.
 */
__noinline int xl_load(__u32 syn)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	struct stream_state *e;

	if (!scr)
		return 0;
	e = bpf_map_lookup_elem(&streams, &scr->fk);
	if (!e || !e->xl_on)
		return 0;
	if (syn) {
		bpf_map_delete_elem(&streams, &scr->fk);
		return 0;
	}
	scr->xl = e->xl;
	scr->xl_on = 1;
	return 1;
}

/*
 * A client's segment that passes, of a translated connection: into the server's numbering. Bytes of the
 * request refused in the stream never reach the server (a copy that is not that request's exact start,
 * which is answered again, is dropped). A global function.
 */
__noinline int xlate_to_server(struct __sk_buff *skb)
{
	__u32 zero = 0, last;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	struct pkt *p;

	if (!skb || !scr || !scr->xl_on)
		return TC_ACT_OK;
	p = &scr->p;
	last = scr->xl.c_after - scr->xl.c_before;
	if (p->payload_len && last && seq_before(p->seq, scr->xl.c_pos) &&
	    seq_before(scr->xl.c_pos - last, p->seq + p->payload_len))
		return TC_ACT_SHOT;
	if (xlate_segment(skb, p, &scr->xl, 1)) {
		percpu_inc(&dp_counters, DP_REPLY_FAILED);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

#define SERVER_OWES_NOTHING 0
#define SERVER_OWES 1               /* bytes it wrote are unsent, or the client has not got them all */
#define SERVER_NOT_CONNECTED 2      /* no established socket: a pending handshake (the request rides on
				     * its last ACK, deferred accept), a SYN cookie, or gone */

/*
 * Whether the server owes the client anything: every byte it wrote was sent, and the client's
 * acknowledgment on this segment (`ack`, in the server's numbering) is the server's next byte, so the
 * client has them all (snd_una is not looked at: the stack has not read this segment's acknowledgment
 * yet). Without socket lookups (crafted test packets): nothing. A global function.
 */
__noinline int server_owes(struct __sk_buff *skb, const struct pkt *p, __u32 ack)
{
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	int owes = SERVER_NOT_CONNECTED;

	if (!skb || !p)
		return SERVER_NOT_CONNECTED;
	if (!socket_lookup)
		return SERVER_OWES_NOTHING;
	sk = lookup_conn(skb, p);
	if (!sk)
		return SERVER_NOT_CONNECTED;
	if (sk->state == BPF_TCP_ESTABLISHED && (tp = bpf_skc_to_tcp_sock(sk)))
		owes = tp->write_seq != tp->snd_nxt || ack != tp->snd_nxt ? SERVER_OWES : SERVER_OWES_NOTHING;
	bpf_sk_release(sk);
	return owes;
}

/*
 * Answer a refused request in its connection's stream and keep the connection: the reply (without
 * Connection: close, without FIN) goes to the client, the request is dropped, and the connection is
 * translated from then on (xlate.bpf.h). Only when nothing can come out of order: the server has begun a
 * response to every request it got and owes no byte, and the client did not ask to close. A request
 * whose head or body goes on past its segment is swallowed: the segment is acknowledged in the server's
 * place (the client then sends the rest; a client held to a small congestion window sends nothing more
 * until then) and the reply is put in where the request ends (`gen_again` & 4: a segment of such a
 * request's rest). `again` (`gen_again` & 1): bytes of the last refused request sent again, answered
 * again (its reply, or the acknowledgment of what was swallowed, was lost). Returns TC_ACT_SHOT; -1 to
 * answer the closing way (reply with Connection: close); -2 to reset the connection (the server owes
 * responses the reply would overtake, or the client has not got an earlier reply whole: any reply now
 * would be out of order); -3 when the request's head goes on and cannot be swallowed (the caller drops
 * it so that it comes again whole, or answers the closing way). A global function.
 */
__noinline int reply_in_stream(struct __sk_buff *skb, const struct pkt *p, __u32 gen_again)
{
	__u32 zero = 0, idx, acked, swallowed = 0, again = gen_again & 1, cont = gen_again & 4, s_pos = 0;
	__u32 whole = 1;
	int owes;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	struct stream_state *e;
	struct http_reply *reply;
	struct seq_xlate x = {};

	if (!skb || !p || !scr)
		return -1;
	idx = HTTP_REPLY_KEEPALIVE + ((gen_again >> 1) & 1);
	reply = bpf_map_lookup_elem(&http_reply, &idx);
	if (!reply || !reply->len || find_timestamps(skb, p->l4_off, p->doff) < 0 ||
	    (p->family == 6 && p->l4_off != p->l3_off + 40))
		goto closed;
	e = bpf_map_lookup_elem(&streams, &scr->fk);
	if (again) {
		if (!scr->xl_on)
			return -1;
		/* up to that request's end, as the first reply (or acknowledgment) did; the reply again only
		 * when the client's acknowledgment stops where it was put in (else it has the reply) */
		acked = scr->xl.c_pos - p->seq;
		whole = !scr->xl.swallow && p->ack == scr->xl.s_pos + scr->xl.s_before;
		if (whole && p->payload_len > SE_REPLY_REQUEST_MAX)
			return -1;
	} else {
		/* the client has every byte the server sent and every reply put in before (an ack inside
		 * one: the new reply would overlap it) */
		s_pos = scr->xl_on ? xl_client_ack(&scr->xl, p->ack) : p->ack;
		if (scr->xl_on && xl_server_seq(&scr->xl, s_pos) != p->ack) {
			percpu_inc(&dp_counters, DP_REPLY_OWED);
			return -2;
		}
		owes = server_owes(skb, p, s_pos);
		if (owes == SERVER_NOT_CONNECTED)
			goto closed; /* nothing to keep: the closing reply resets the pending handshake */
		if (owes == SERVER_OWES || (e && e->requests != e->responses)) {
			if (!cont && scr->pre.valid && scr->post.phase == STREAM_HEADERS)
				return -3; /* (it comes again: by then the server may owe nothing) */
			/* a reply now would come before responses the client waits for: reset */
			percpu_inc(&dp_counters, DP_REPLY_OWED);
			return -2;
		}
		whole = scr->post.phase == STREAM_REQUEST;
		/* a head that says Expect: 100-continue, whole, its body not sent: the client waits for the
		 * answer before it sends the body (curl for 1 s), so it is answered now, the closing way */
		if (!cont && !whole && scr->post.phase != STREAM_HEADERS && (scr->post.last & LAST_EXPECT))
			goto closed;
		if (!scr->pre.valid || (p->flags & TCP_FIN) || scr->post.phase == STREAM_OPAQUE ||
		    (__u8)(scr->post.reqs - scr->pre.reqs) != (cont ? 0 : 1) || (scr->post.last & LAST_CLOSE) ||
		    (!cont && whole && p->payload_len > SE_REPLY_REQUEST_MAX))
			goto closed;
		/* (a GSO skb of a swallowed request's rest, as a local client's TSO sends it, is rewritten too:
		 * the kernel drops the offload when the skb shrinks; the first segment of a request is not
		 * judged from a merged skb, see refuse_http) */
		acked = scr->keep; /* the reply acknowledges up to the request's end (bytes before rcv_nxt too) */
		swallowed = scr->keep - (scr->pre.seq - p->seq);
	}
	if (whole) {
		if (rewrite_to_reply(skb, p, reply, acked, 0))
			goto fail;
	} else if (rewrite_to_ack(skb, p, acked)) {
		goto fail;
	}
	if (clone_marked(skb, 0))
		goto fail;
	if (whole) {
		percpu_inc(&dp_counters, DP_REPLY_SENT);
		percpu_inc(&dp_counters, DP_REPLY_KEPT);
	} else {
		port_count(bpf_ntohs(p->dport), PORT_SWALLOWED);
	}
	if (again)
		return TC_ACT_SHOT;
	if (e && e->xl_on)
		x = e->xl;
	if (!cont)
		x.c_before = x.c_after;
	x.c_after += swallowed;
	x.c_pos = p->seq + acked;
	x.swallow = !whole;
	if (whole) {
		x.s_before = x.s_after;
		x.s_after += reply->len;
		x.s_pos = s_pos;
	}
	scr->post.seq = p->seq + acked;
	if (e) {
		e->prev = scr->pre;
		e->cur = scr->post;
		e->xl = x;
		e->xl_on = 1;
	} else {
		__builtin_memset(&scr->fresh, 0, sizeof(scr->fresh));
		scr->fresh.prev = scr->pre;
		scr->fresh.cur = scr->post;
		scr->fresh.xl = x;
		scr->fresh.xl_on = 1;
		bpf_map_update_elem(&streams, &scr->fk, &scr->fresh, BPF_ANY);
		mark_followed(&scr->fk);
	}
	replied_in_stream = 1;
	return TC_ACT_SHOT;
closed:
	if (!again && !cont && scr->pre.valid && scr->post.phase == STREAM_HEADERS)
		return -3;
	percpu_inc(&dp_counters, DP_REPLY_CLOSED);
	return -1;
fail:
	percpu_inc(&dp_counters, DP_REPLY_FAILED);
	return TC_ACT_SHOT;
}

/*
 * A refused request whose head goes on past its segment and cannot be swallowed (reply_in_stream: -3; the
 * server owes a response, the client asked to close, a first request on a handshake's last ACK): dropped
 * (refused, as `{mode: drop}` does), so that the client sends it again merged with what follows; after
 * SE_INCOMPLETE_TRIES drops it is answered the closing way.
 */
static __always_inline bool head_goes_on(struct __sk_buff *skb, const struct pkt *p, __u8 mode, bool syn)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);

	if (mode != REJECT_HTTP_REPLY || syn || !scr || !scr->pre.valid ||
	    scr->post.phase != STREAM_HEADERS)
		return false;
	if (incomplete_try(skb, p) > SE_INCOMPLETE_TRIES)
		return false;
	port_count(bpf_ntohs(p->dport), PORT_INCOMPLETE);
	return true;
}

#define REFUSE_BY_REJECT (-1) /* refuse_http(): the caller answers with reject(skb, p, scratch reject_how) */

/* refuse_http()'s answer when reject() is to answer (called by tc_ingress, not down this call chain). */
static __always_inline int refuse_by(__u32 how)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);

	if (!scr)
		return TC_ACT_SHOT;
	scr->reject_how = how;
	return REFUSE_BY_REJECT;
}

/*
 * Refuse the HTTP request the segment `p` starts at client seq `at` (`skip` bytes into its payload), as
 * `mode_how` (enum reject_mode | REJECT_SYN, REJECT_GEN1) says: dropped to come again (a merged skb,
 * `{mode: drop}`, a head that goes on), answered in the stream, or answered the closing way (by the
 * caller: REFUSE_BY_REJECT). A global function, and reject() is not called from it, so that tc_ingress's
 * call chains stay within the verifier's 512 bytes of stack.
 */
__noinline int refuse_http(struct __sk_buff *skb, const struct pkt *p, __u32 mode_how, __u32 skip, __u32 at)
{
	__u32 how = mode_how & (REJECT_SYN | REJECT_GEN1);
	__u8 mode = mode_how & 0xff;
	struct flow_key *fk = scratch_key(false);
	bool syn = mode_how & REJECT_SYN, merged;
	int r;

	if (!skb || !p || !fk)
		return TC_ACT_SHOT;
	merged = skb->gso_segs > 1;
	if (merged || mode == REJECT_DROP) {
		if (merged)
			percpu_inc(&dp_counters, DP_GSO_DROPPED); /* no reply built from a merged skb */
		bpf_map_update_elem(&refused, fk, &at, BPF_ANY);
		return TC_ACT_SHOT;
	}
	if (mode == REJECT_HTTP_REPLY && !syn) {
		/* (also for a segment that carries bytes received before: the reply acknowledges them) */
		r = reply_in_stream(skb, p, (how & REJECT_GEN1) ? 2 : 0);
		if (r >= 0)
			return r;
		if (r == -3 && head_goes_on(skb, p, mode, syn)) {
			bpf_map_update_elem(&refused, fk, &at, BPF_ANY);
			return TC_ACT_SHOT;
		}
		if (r == -3)
			percpu_inc(&dp_counters, DP_REPLY_CLOSED);
		if (r == -2)
			return refuse_by(REJECT_RST | how | skip << 16);
	}
	if (syn || skip)
		/* a reply that closes needs the request's exact place in the stream: reset instead (a
		 * blocked TFO request; a segment that also carries bytes received before) */
		return refuse_by(REJECT_RST | how | skip << 16);
	return refuse_by(mode | how);
}

#endif /* SENTINEL_KEEPALIVE_BPF_H */

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * A client's data segment in its connection's stream: where the stream stands (stream_prepare), which
 * request starts at its first new byte and where to cut it (http_segment), and passing it (stream_pass).
 * Part of inbound.bpf.c (one BPF object): included there after the maps and scratch it uses, not on its
 * own.
 */
#ifndef SENTINEL_SEGMENT_BPF_H
#define SENTINEL_SEGMENT_BPF_H

/*
 * The word of `followed` that holds the bit of the connection `fk` (*bit: the bit), keyed by the load's
 * random head_hash_key (a client cannot aim at another connection's bit; it could only get its own
 * connection reset).
 */
static __always_inline __u64 *followed_bit(const struct flow_key *fk, __u64 *bit)
{
	const __u64 *w = (const __u64 *)fk;
	__u64 h = head_hash_key;
	__u32 idx;

	for (int i = 0; i < sizeof(*fk) / 8; i++) {
		h = (h ^ w[i]) * 0x9E3779B97F4A7C15ULL;
		h ^= h >> 29;
	}
	*bit = 1ULL << (h & 63);
	idx = (__u32)(h >> 6) & (SE_FOLLOWED_WORDS - 1);
	return bpf_map_lookup_elem(&followed, &idx);
}

/* The connection `fk` is followed: its stream state is being made (stream_pass, reply_in_stream). */
static __always_inline void mark_followed(const struct flow_key *fk)
{
	__u64 bit, *word = followed_bit(fk, &bit);

	if (word && !(*word & bit))
		__sync_fetch_and_or(word, bit);
}

/*
 * The stream's state at client sequence number `at` into scratch pre and post (the key in scratch fk):
 * the state after the last segment passed, or before it (scratch again) when that segment comes again
 * before the stack took it (a duplicate queued behind it while the application held the socket; the
 * stack dropped it), or a request's start when neither (a state at another place: 1; none, but the
 * connection was followed before: 2, evicted from the map; none and never followed: 3, a new connection
 * or one older than the rules). 0 when a state was found. A global function.
 */
__noinline int stream_prepare(__u32 at)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	struct stream_state *ss;
	__u64 bit, *word;
	int lost = 0;

	if (!scr)
		return 0;
	__builtin_memset(&scr->pre, 0, sizeof(scr->pre));
	scr->again = 0;
	ss = bpf_map_lookup_elem(&streams, &scr->fk);
	if (ss && ss->cur.valid && ss->cur.seq == at) {
		scr->pre = ss->cur;
	} else if (ss && ss->prev.valid && ss->prev.seq == at) {
		scr->pre = ss->prev;
		scr->again = 1;
		scr->again_reqs = ss->cur.reqs;
		scr->again_started = ss->cur.reqs - ss->prev.reqs;
		scr->again_hash = ss->cur.hash;
		scr->again_end = ss->cur.seq;
	} else if (ss) {
		lost = 1;
	} else {
		word = followed_bit(&scr->fk, &bit);
		lost = word && (*word & bit) ? 2 : 3;
	}
	scr->pre.seq = at;
	scr->pre.valid = 1;
	scr->post = scr->pre;
	return lost;
}

/*
 * Clear a client segment's urgent pointer (URG flag and pointer; checksum kept). A receiving stack takes
 * the byte an urgent pointer names out of the stream its application reads (unless the socket sets
 * SO_OOBINLINE, which nginx does not), and any segment can name a byte up to 64 KiB further on, even a
 * bare ACK or a resent one: a client that marks a byte of its request target urgent shows the data plane
 * `/aXpi` and the server `/api`, and a byte marked inside a body moves where the server sees the next
 * request start. HTTP has no use for urgent data. Without URG the server reads every byte as sent: the
 * bytes judged. 0, or -1 when the rewrite failed. A global function.
 */
__noinline int clear_urgent(struct __sk_buff *skb, const struct pkt *p)
{
	__u16 word, urg;

	if (!skb || !p || bpf_skb_load_bytes(skb, p->l4_off + 12, &word, sizeof(word)) ||
	    bpf_skb_load_bytes(skb, p->l4_off + 18, &urg, sizeof(urg)))
		return -1;
	if (store_csum16(skb, p->l4_off + 16, p->l4_off + 12, word, word & ~bpf_htons(TCP_URG)))
		return -1;
	return store_csum16(skb, p->l4_off + 16, p->l4_off + 18, urg, 0);
}

/*
 * Pass the segment whose stream was followed (scratch pre, post and keep): cut it where a request starts
 * inside it, and remember where the stream stands. TC_ACT_OK, or TC_ACT_SHOT when the cut failed (the
 * client sends the segment again). A global function.
 */
__noinline int stream_pass(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	struct stream_state *e;
	__u32 started;

	if (!skb || !p || !scr || !scr->pre.valid)
		return TC_ACT_OK;
	if (scr->keep < p->payload_len) {
		if (trim_payload(skb, p, scr->keep)) {
			percpu_inc(&dp_counters, DP_CUT_FAILED);
			return TC_ACT_SHOT;
		}
		port_count(bpf_ntohs(p->dport), PORT_CUT);
	}
	scr->post.seq = p->seq + ((p->flags & TCP_SYN) ? 1 : 0) + scr->keep;
	started = (__u8)(scr->post.reqs - scr->pre.reqs);
	if (scr->again)
		started -= scr->again_started; /* the stack takes one of the two (may be -1: wraps) */
	e = bpf_map_lookup_elem(&streams, &scr->fk);
	if (e) {
		e->prev = scr->pre;
		e->cur = scr->post;
		if (started)
			__sync_fetch_and_add(&e->requests, started);
		return TC_ACT_OK;
	}
	__builtin_memset(&scr->fresh, 0, sizeof(scr->fresh));
	scr->fresh.prev = scr->pre;
	scr->fresh.cur = scr->post;
	scr->fresh.requests = started;
	bpf_map_update_elem(&streams, &scr->fk, &scr->fresh, BPF_NOEXIST);
	mark_followed(&scr->fk);
	return TC_ACT_OK;
}

/*
 * The segment that passed last comes again (scratch again; a duplicate queued behind it while the
 * application held the socket): followed from `skip`, every request it started, to its end or to a
 * request that starts where that one was cut or later. 1 when it carries the same requests (their heads
 * hash the same): their verdicts stand (scratch keep: cut there, again 2), nothing is judged. 0 when its
 * bytes differ (other heads, or more of the last one): read as new. A global function.
 */
__noinline int segment_again(struct __sk_buff *skb, __u32 skip)
{
	__u32 zero = 0, follow;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);

	if (!skb || !scr)
		return 0;
	follow = scr->again_end - scr->p.seq - ((scr->p.flags & TCP_SYN) ? 1 : 0); /* where that one ended */
	follow = stream_follow(skb, &scr->p, skip, &scr->post, FOLLOW_HOW(SE_PIPELINED_MAX, follow));
	if (follow != FOLLOW_RESET && scr->again_started && scr->post.reqs == scr->again_reqs &&
	    scr->post.hash == scr->again_hash) {
		scr->keep = follow;
		scr->again = 2;
		port_count(bpf_ntohs(scr->p.dport), PORT_RETRANSMIT);
		return 1;
	}
	scr->post = scr->pre;
	return 0;
}

/*
 * A client's data segment on a port with HTTP resources: where it stands in the stream (segment_position)
 * decides whether it is looked at; where it stands in the stream's HTTP framing (follow.bpf.h) decides
 * whether a request starts at its first new byte (its request line is then looked up) and where the next
 * one starts (scratch keep: the requests there are judged from there on, see pipelined_start; stream_pass
 * cuts). A request line that does not end in the segment is dropped at rcv_nxt, so that the client sends
 * it again, merged with what follows (Linux merges small unacknowledged segments when it retransmits), up
 * to SE_INCOMPLETE_TRIES times; then the connection is reset. `reject.incomplete: pass` lets it through
 * instead. *skip: bytes of the segment received before (judged from there on).
 */
static __always_inline __u32 http_segment(struct __sk_buff *skb, const struct pkt *p, const struct port_conf *pc,
					  __u8 gen, __u32 *skip, struct ingress_scratch *scr)
{
	__u16 port = bpf_ntohs(p->dport);
	__u32 res, follow;

	scr->pre.valid = 0;
	switch (segment_position(skb, p, skip, scr->xl_on ? &scr->xl : NULL, &scr->seen)) {
	case SEG_REFUSED_KEPT:
		port_count(port, PORT_REFUSED_AGAIN);
		return SEGMENT_ANSWER_AGAIN;
	case SEG_OLD:
		port_count(port, PORT_RETRANSMIT);
		return 0;
	case SEG_FUTURE:
		port_count(port, PORT_OUT_OF_ORDER);
		return SEGMENT_DROP;
	case SEG_NO_SOCKET:
		port_count(port, PORT_NO_SOCKET);
		return 0;
	}
	if (*skip > 0xffff) {
		port_count(port, PORT_OUT_OF_ORDER);
		return SEGMENT_DROP;
	}
	scr->req_off = *skip; /* (a request there is judged by its own parameters, not those of bytes before) */
	res = stream_prepare(p->seq + ((p->flags & TCP_SYN) ? 1 : 0) + *skip);
	if (res == 1 || (res >= 2 && scr->seen))
		port_count(port, PORT_STREAM_LOST);
	if (res == 2 && scr->seen && pc->incomplete != INCOMPLETE_PASS) {
		/* No state, but followed before and the server's socket received bytes: the stream was evicted
		 * from the map (65,536 others sending since). Where its requests start is not known, and a client
		 * that evicts its own stream in the middle of a body could then send the body's end and a request
		 * in one segment, which nothing would find (whatever the segment starts with, it may be body
		 * bytes to the server). Reset (fail-closed), unless reject.incomplete is pass: then read as a
		 * request's start, as is a connection older than the rules (3). */
		scr->pre.valid = 0;
		port_count(port, PORT_LOST_RESET);
		return SEGMENT_RESET;
	}
	if (scr->again && segment_again(skb, *skip))
		return 0;
	follow = stream_follow(skb, p, *skip, &scr->post, FOLLOW_HOW(0, p->payload_len));
	if (follow == FOLLOW_RESET) {
		scr->pre.valid = 0;
		port_count(port, PORT_FRAMING_RESET);
		return SEGMENT_RESET;
	}
	scr->keep = follow;
	if (scr->xl_on && scr->xl.swallow)
		return SEGMENT_SWALLOW; /* the refused request goes on here (the stream is inside it) */
	if (scr->pre.phase != STREAM_REQUEST) {
		port_count(port, PORT_BODY);
		return 0;
	}
	res = http_route(skb, p, *skip << 16 | port, (__u32)gen << 16 | pc->slot, &pc->lens);
	if (res == ROUTE_UNREAD) {
		/* a path no server reads the way it would be judged here (counted in http_route): fail closed */
		if (pc->incomplete == INCOMPLETE_PASS)
			return 0;
		scr->pre.valid = 0;
		return SEGMENT_RESET;
	}
	if (res != ROUTE_INCOMPLETE)
		return res;
	scr->pre.valid = 0; /* nothing passed: the stream stays where it was */
	if (pc->incomplete == INCOMPLETE_PASS) {
		port_count(port, PORT_INCOMPLETE_PASSED);
		return 0;
	}
	if (incomplete_try(skb, p) > SE_INCOMPLETE_TRIES) {
		port_count(port, PORT_INCOMPLETE_RESET);
		return SEGMENT_RESET;
	}
	return SEGMENT_DROP;
}

#define PIPELINED_CUT 0xffffffffU /* pipelined_*(): cut the segment before the request */

/*
 * The requests that start inside a client's segment after its first new byte (pipelined behind another,
 * or after a body) are judged each where it starts, as the follower finds them, one by one (tc_ingress):
 * pipelined_start() says where the next one starts (from scratch keep and post, where following stopped),
 * http_route() finds its resource, pipelined_follow() follows it to where the one after it starts, and,
 * once judged, pipelined_verdict() goes on or cuts. A request that passes is followed to where the next
 * one starts. The segment is cut (scratch keep, post) before a request that cannot be judged there, which
 * the client's TCP then sends again at the start of a segment: one refused (remembered in `refused`, so
 * that it gets the same verdict then, not judged or counted twice), one whose request line goes on past
 * the segment, one after SE_PIPELINED_MAX judged in the segment. Not in a segment that came again with
 * the requests judged when it came first (scratch again 2). (Small global functions called from
 * tc_ingress, none that calls http_route() or judge(): their frames need all of the stack tc_ingress
 * leaves.)
 *
 * pipelined_start: where the next request starts (a payload offset: http_route()'s skip), or
 * PIPELINED_CUT (none, or one refused when it came before).
 */
__noinline __u32 pipelined_start(void)
{
	__u32 zero = 0, *refused_at;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);

	if (!scr || !scr->pre.valid || scr->again == 2 || scr->keep >= scr->p.payload_len || scr->keep > 0xffff ||
	    scr->post.phase != STREAM_REQUEST)
		return PIPELINED_CUT;
	scr->pipe_at = scr->p.seq + ((scr->p.flags & TCP_SYN) ? 1 : 0) + scr->keep;
	refused_at = bpf_map_lookup_elem(&refused, &scr->fk);
	if (refused_at && *refused_at == scr->pipe_at)
		return PIPELINED_CUT;
	return scr->keep;
}

/*
 * pipelined_follow: the request at scratch keep, whose route is `res`, followed to where the one after it
 * starts (scratch post; scratch cut keeps the stream before it, pipe_next where it ends, pipe_flags
 * judge()'s flags: the generation, of scratch pipe_key, and the system rules' verdict). Returns its
 * resource (0: none), PIPELINED_CUT (its request line goes on past the segment), or SEGMENT_RESET when its
 * framing or target is one no server reads the way it would be judged (as at a segment's start).
 */
__noinline __u32 pipelined_follow(struct __sk_buff *skb, __u32 res, __u32 incomplete)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);

	if (!skb || !scr || res == ROUTE_INCOMPLETE)
		return PIPELINED_CUT;
	if (res == ROUTE_UNREAD) {
		if (incomplete != INCOMPLETE_PASS)
			return SEGMENT_RESET;
		res = 0;
	}
	scr->pipe_res = res;
	scr->req_off = scr->keep;
	scr->cut = scr->post;
	scr->pipe_next = stream_follow(skb, &scr->p, scr->keep, &scr->post,
				       FOLLOW_HOW(FOLLOW_GOES_ON, scr->p.payload_len));
	if (scr->pipe_next == FOLLOW_RESET) {
		port_count(bpf_ntohs(scr->p.dport), PORT_FRAMING_RESET);
		return SEGMENT_RESET;
	}
	scr->pipe_flags = (scr->pipe_key >> 16) | JUDGE_HTTP | (scr->pipe_res ? system_flag(scr->pipe_key >> 16) : 0);
	return scr->pipe_res;
}

/* pipelined_verdict: judge()'s verdict on the request: it passed (followed on), was refused (the segment
 * is cut before it, remembered), or was not judged (JUDGE_QUEUE_FULL: cut before it, counted; also for a
 * segment's first request, which tc_ingress drops then). 0 to go on to the next, 1 to stop. */
__noinline int pipelined_verdict(__u32 verdict)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);

	if (!scr)
		return 1;
	if (verdict == JUDGE_QUEUE_FULL) {
		scr->post = scr->cut;
		port_count(bpf_ntohs(scr->p.dport), PORT_QUEUE_FULL);
		return 1;
	}
	if (verdict != BLOCK_NONE) {
		scr->post = scr->cut;
		bpf_map_update_elem(&refused, &scr->fk, &scr->pipe_at, BPF_ANY);
		return 1;
	}
	scr->keep = scr->pipe_next;
	port_count(bpf_ntohs(scr->p.dport), PORT_PIPELINED);
	return 0;
}

#endif /* SENTINEL_SEGMENT_BPF_H */

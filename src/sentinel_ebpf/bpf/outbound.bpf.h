/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Outbound governance: connect() judged in cgroup/connect4|6, sock_ops following connections, and a local
 * caller's HTTP requests judged at TC egress (out_request), a blocked one answered in the caller's
 * stream when it can be (out_reply_in_stream, xlate_outbound).
 * Part of inbound.bpf.c (one BPF object): included there after the maps and scratch it uses, not on its
 * own.
 */
#ifndef SENTINEL_OUTBOUND_BPF_H
#define SENTINEL_OUTBOUND_BPF_H

/*
 * Outbound connections. cgroup/connect4|6 (attached at the cgroup2 root) judge each connect() to an
 * outbound resource and fail a blocked one at once with ECONNREFUSED; sock_ops follows the connection
 * to its outcome (established, or failed: a completion with error, feeding circuit breakers) and to its
 * close (concurrency).
 */
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define ECONNREFUSED 111
#define TCP_CLOSE_STATE 7

static __always_inline int on_connect(struct bpf_sock_addr *ctx, __u8 family)
{
	struct out_route_key key = {};
	struct out_route *route;
	struct res_stats *st;
	struct res_conf *rc;
	__u8 gen = current_gen();
	__u64 now, cookie;
	__u32 res, idx, verdict;

	if (ctx->type != SOCK_STREAM)
		return 1;
	key.gen = gen;
	key.family = family;
	key.port = (__u16)ctx->user_port;
	if (family == 4) {
		__u32 a = ctx->user_ip4;

		__builtin_memcpy(key.addr, &a, 4);
		key.prefixlen = 32 + 32;
	} else {
		__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];

		__builtin_memcpy(key.addr, &a0, 4);
		__builtin_memcpy(key.addr + 4, &a1, 4);
		__builtin_memcpy(key.addr + 8, &a2, 4);
		__builtin_memcpy(key.addr + 12, &a3, 4);
		key.prefixlen = 32 + 128;
	}
	route = bpf_map_lookup_elem(&out_routes, &key);
	if (!route)
		return 1;
	if (route->cgroup_level && bpf_get_current_ancestor_cgroup_id(route->cgroup_level) != route->cgroup_id)
		return 1; /* the resource is limited to another cgroup */
	res = route->resource;
	idx = gen * SE_MAX_RESOURCES + res;
	st = bpf_map_lookup_elem(&res_stats, &res);
	rc = bpf_map_lookup_elem(&res_conf, &idx);
	if (!st || !rc)
		return 1;
	now = now_ns();
	verdict = check_flow_isolation(res, idx, rc, st, now);
	if (verdict == BLOCK_NONE && rc->nbreakers && breakers_check(idx, res, now / 1000000))
		verdict = BLOCK_CIRCUIT_BREAKING;
	if (verdict != BLOCK_NONE) {
		stat_block(st, now / 1000000, verdict);
		percpu_inc(&dp_counters, DP_CONNECT_REFUSED);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	stat_pass(st, now / 1000000);
	cookie = bpf_get_socket_cookie(ctx);
	struct out_conn conn = { .start_ns = now, .resource = res };
	if (bpf_map_update_elem(&out_conns, &cookie, &conn, BPF_ANY) == 0)
		__sync_fetch_and_add(&st->concurrency, 1);
	else
		percpu_inc(&dp_counters, DP_INFLIGHT_FULL);
	return 1;
}

SEC("cgroup/connect4")
int out_connect4(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, 4);
}

SEC("cgroup/connect6")
int out_connect6(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, 6);
}

/* The connect attempt resolved (established or failed): one completion of the resource. */
static __always_inline void out_resolved(struct out_conn *c, bool error)
{
	struct res_stats *st = bpf_map_lookup_elem(&res_stats, &c->resource);
	__u64 now = now_ns(), rt_ms = now > c->start_ns ? (now - c->start_ns) / 1000000 : 0;

	c->established = 1;
	if (st)
		stat_complete(st, now / 1000000, rt_ms, error);
	breakers_complete(current_gen() * SE_MAX_RESOURCES + c->resource, c->resource, now / 1000000, rt_ms, error);
}

/* A connection to a TCP resource completed its handshake: it takes the slot its SYN was admitted to. */
static __always_inline void inbound_established(struct bpf_sock_ops *skops)
{
	struct flow_key k = { .kind = FLOW_KIND_CONNECTION };
	struct inflight *f;

	if (skops->family == AF_INET) {
		__u32 r = skops->remote_ip4, l = skops->local_ip4;

		k.family = 4;
		__builtin_memcpy(k.saddr, &r, 4);
		__builtin_memcpy(k.daddr, &l, 4);
	} else if (skops->family == AF_INET6) {
		__u32 r[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2], skops->remote_ip6[3] };
		__u32 l[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3] };

		k.family = 6;
		__builtin_memcpy(k.saddr, r, 16);
		__builtin_memcpy(k.daddr, l, 16);
	} else {
		return;
	}
	k.sport = bpf_htons((__u16)bpf_ntohl(skops->remote_port)); /* remote_port: the port << 16 in network order */
	k.dport = bpf_htons((__u16)skops->local_port);
	f = bpf_map_lookup_elem(&inflight, &k);
	if (!f || __sync_val_compare_and_swap(&f->active, INFLIGHT_PENDING, INFLIGHT_ACTIVE) != INFLIGHT_PENDING)
		return;
	struct res_stats *st = bpf_map_lookup_elem(&res_stats, &f->resource);

	if (st)
		hold(st, f->inbound ? inbound_node() : NULL, f->hot);
}

SEC("sockops")
int out_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct out_conn *c;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (bpf_map_lookup_elem(&out_conns, &cookie))
			bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		c = bpf_map_lookup_elem(&out_conns, &cookie);
		if (c && !c->established)
			out_resolved(c, false);
		return 1;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		inbound_established(skops);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != TCP_CLOSE_STATE)
			return 1;
		c = bpf_map_lookup_elem(&out_conns, &cookie);
		if (!c)
			return 1;
		if (!c->established)
			out_resolved(c, true); /* refused, unreachable or timed out */
		struct res_stats *st = bpf_map_lookup_elem(&res_stats, &c->resource);
		if (st)
			__sync_fetch_and_add(&st->concurrency, -1);
		bpf_map_delete_elem(&out_conns, &cookie);
		return 1;
	}
	return 1;
}

/*
 * Answer a blocked outbound HTTP request in the local caller's stream and keep its connection: the 503
 * (without Connection: close) is delivered to the caller's socket in the dependency's place, the request
 * never reaches the dependency (its skb goes on as a bare ACK), and the connection is translated from
 * then on (xlate.bpf.h; the caller is the client). Only for one whole request in the segment (its head,
 * and its body by Content-Length or chunks, end with the segment: else its rest would reach the
 * dependency) while no response is owed to an earlier request (its in-flight entry is idle) and the
 * caller did not ask to close. `gen_again` & 1: the segment may carry bytes of the request last answered so (the reply was lost
 * before the caller's socket took it): answered again when the caller lacks it, dropped when it has it;
 * -1 when it carries none. & 2: rules generation 1. Returns TC_ACT_OK (the bare ACK) or TC_ACT_SHOT, or
 * -1 to answer the closing way (reject()). A global function.
 */
__noinline int out_reply_in_stream(struct __sk_buff *skb, const struct pkt *p, __u32 gen_again)
{
	__u32 zero = 0, idx, acked, again = gen_again & 1, s_pos = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&egress_scratch, &zero);
	struct seq_xlate x = {};
	struct http_reply *reply;
	struct stream_state *e;
	struct inflight *f;

	if (!skb || !p || !scr)
		return -1;
	e = bpf_map_lookup_elem(&streams, &scr->fk);
	if (again && (!e || !e->xl_on || !refused_again(p, &e->xl)))
		return -1;
	idx = HTTP_REPLY_OUT_KEEPALIVE + ((gen_again >> 1) & 1);
	reply = bpf_map_lookup_elem(&http_reply, &idx);
	if (!reply || !reply->len || find_timestamps(skb, p->l4_off, p->doff) < 0 ||
	    (p->family == 6 && p->l4_off != p->l3_off + 40))
		return again ? TC_ACT_SHOT : -1;
	if (again) {
		if (!e || p->ack != e->xl.s_pos + e->xl.s_before)
			return TC_ACT_SHOT; /* the caller has the reply: a stale copy */
		acked = e->xl.c_pos - p->seq;
	} else {
		s_pos = e && e->xl_on ? xl_client_ack(&e->xl, p->ack) : p->ack;
		if (e && e->xl_on && xl_server_seq(&e->xl, s_pos) != p->ack)
			return -1; /* the caller lacks part of an earlier reply */
		f = bpf_map_lookup_elem(&inflight, &scr->fk);
		if ((f && f->active == 1) || p->payload_len > SE_REPLY_REQUEST_MAX || (p->flags & TCP_FIN))
			return -1;
		__builtin_memset(&scr->post, 0, sizeof(scr->post));
		if (stream_follow(skb, p, 0, &scr->post, FOLLOW_HOW(0, p->payload_len)) != p->payload_len ||
		    scr->post.phase != STREAM_REQUEST || scr->post.reqs != 1 || scr->post.carry_len ||
		    (scr->post.last & LAST_CLOSE))
			return -1;
		acked = p->payload_len;
	}
	reply_view(&scr->reply, p, reply->len);
	if (rewrite_to_reply(skb, p, reply, acked, 0))
		goto fail;
	if (!again) {
		/* everything from scratch before the clone: on lo the reply is sent out of lo, and this
		 * program runs on it at once, nested, over this scratch (a reply that then fails comes
		 * again: the caller sends the request again) */
		if (e && e->xl_on)
			x = e->xl;
		x.c_before = x.c_after;
		x.c_after += acked;
		x.c_pos = p->seq + acked;
		x.s_before = x.s_after;
		x.s_after += reply->len;
		x.s_pos = s_pos;
		if (e) {
			e->xl = x;
			e->xl_on = 1;
		} else {
			__builtin_memset(&scr->fresh, 0, sizeof(scr->fresh));
			scr->fresh.xl = x;
			scr->fresh.xl_on = 1;
			bpf_map_update_elem(&streams, &scr->fk, &scr->fresh, BPF_ANY);
		}
		replied_in_stream = 1;
	}
	if (clone_marked(skb, skb->ifindex != SE_LOOPBACK_IFINDEX ? BPF_F_INGRESS : 0))
		goto fail;
	percpu_inc(&dp_counters, DP_REPLY_SENT);
	percpu_inc(&dp_counters, DP_REPLY_KEPT);
	if (again)
		return TC_ACT_SHOT;
	/* The request's skb goes on as a bare ACK in the dependency's numbering (its next byte, and what
	 * it sent): dropped, it would fail the caller's transmission, its TCP would not count the request
	 * as sent, and it would take the reply's acknowledgment of it for one of unsent data. */
	scr->xl_on = 0; /* (in the dependency's numbering already) */
	if (rewrite_to_rst(skb, &scr->reply, x.c_pos - x.c_after, s_pos, TO_SENDER | BARE_ACK))
		goto fail;
	return TC_ACT_OK;
fail:
	percpu_inc(&dp_counters, DP_REPLY_FAILED);
	return TC_ACT_SHOT;
}

/*
 * A segment of an outbound HTTP connection (the local caller's at egress, `from_caller`; the dependency's
 * at ingress) that had a request answered in the caller's stream: into the other end's numbering. The
 * caller's SYN on those ports starts a new connection: the translation is dropped. Not the programs' own
 * replies (in the caller's numbering already). A global function.
 */
__noinline int xlate_outbound(struct __sk_buff *skb, __u32 from_caller)
{
	__u32 zero = 0;
	struct ingress_scratch *scr =
		bpf_map_lookup_elem(from_caller ? (void *)&egress_scratch : (void *)&ingress_scratch, &zero);
	struct stream_state *e;

	if (!skb || !scr || skb->mark == SE_REPLY_MARK)
		return TC_ACT_OK;
	make_key(&scr->fk, &scr->p, from_caller, FLOW_KIND_OUT_REQUEST);
	e = bpf_map_lookup_elem(&streams, &scr->fk);
	if (!e || !e->xl_on)
		return TC_ACT_OK;
	if (from_caller && (scr->p.flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
		bpf_map_delete_elem(&streams, &scr->fk);
		return TC_ACT_OK;
	}
	if (xlate_segment(skb, &scr->p, &e->xl, from_caller)) {
		percpu_inc(&dp_counters, DP_REPLY_FAILED);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* Egress toward a server of outbound HTTP resources: judge the local caller's request. */
static __always_inline int out_request(struct __sk_buff *skb, const struct pkt *p, __u8 gen,
				       struct flow_key *fk)
{
	struct out_route_key key = { .gen = gen, .family = p->family, .port = p->dport };
	struct out_route *route;
	__u32 res;
	int r;

	if (replied_in_stream) {
		/* bytes of a request answered in the caller's stream, sent again */
		make_key(fk, p, true, FLOW_KIND_OUT_REQUEST);
		r = out_reply_in_stream(skb, p, 1 | (gen ? 2 : 0));
		if (r >= 0)
			return r;
	}
	__builtin_memcpy(key.addr, p->daddr, SE_ADDR_LEN);
	key.prefixlen = 32 + (p->family == 4 ? 32 : 128);
	route = bpf_map_lookup_elem(&out_routes, &key);
	if (!route || !route->http_service)
		return TC_ACT_OK;
	res = http_route(skb, p, 0, (__u32)(gen | ROUTE_OUTBOUND) << 16 | (__u16)route->http_service, &route->lens);
	if (!res || res == ROUTE_INCOMPLETE || res == ROUTE_UNREAD)
		return TC_ACT_OK; /* a local caller's request not read whole: passed (outbound has no port counters) */
	make_key(fk, p, true, FLOW_KIND_OUT_REQUEST);
	if (judge(res, gen | JUDGE_HTTP | JUDGE_EGRESS, skb, p) == BLOCK_NONE)
		return TC_ACT_OK;
	r = out_reply_in_stream(skb, p, gen ? 2 : 0);
	if (r >= 0)
		return r;
	percpu_inc(&dp_counters, DP_REPLY_CLOSED);
	return reject(skb, p, REJECT_HTTP_REPLY | REJECT_OUTBOUND | (gen ? REJECT_GEN1 : 0));
}

#endif /* SENTINEL_OUTBOUND_BPF_H */

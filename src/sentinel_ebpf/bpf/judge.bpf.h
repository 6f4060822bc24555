/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Judging a request or connection: the generation and port in force, port scopes, flow keys, Sentinel's
 * checks in order (flow, isolation, hotspot, circuit breakers, system), taking and giving back
 * concurrency (judge, complete).
 * Part of inbound.bpf.c (one BPF object): included there after the maps and scratch it uses, not on its
 * own.
 */
#ifndef SENTINEL_JUDGE_BPF_H
#define SENTINEL_JUDGE_BPF_H

static __always_inline __u8 current_gen(void)
{
	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&active_gen, &zero);

	return gen ? *gen & 1 : 0; /* no branch on the value: one verifier state for both generations */
}

/* The generation's port table (NULL only if the map is broken: then everything passes). */
static __always_inline struct port_slots *port_table(__u8 gen)
{
	__u32 idx = gen;

	return bpf_map_lookup_elem(&port_slots, &idx);
}

/*
 * The generation in force (in *gen) and its port table, or NULL when the packet concerns no port the
 * rules name (pass it): two loads of the table decide, from the ports read in place. `ingress`: the local
 * port is the destination (TC ingress) or the source (TC egress); the other is the remote one.
 */
static __always_inline struct port_slots *ports_concerned(struct __sk_buff *skb, __u8 *gen, bool ingress)
{
	__u16 sport, dport, local, remote;
	struct port_slots *ports;
	int r = peek_ports(skb, &sport, &dport);

	if (r == PEEK_NOT_TCP)
		return NULL;
	*gen = current_gen();
	ports = port_table(*gen);
	if (!ports || r != PEEK_PORTS)
		return ports; /* headers to parse in full first */
	local = ingress ? dport : sport;
	remote = ingress ? sport : dport;
	/* the local port first: a server's own port decides alone, without the remote port's cache line */
	if (!ports->slot[local] && !(ports->slot[remote] & SE_PORT_OUT_HTTP))
		return NULL;
	return ports;
}

/* What is protected on a local port with port-table entry `slot`. */
static __always_inline struct port_conf *port_lookup(__u16 slot, __u8 gen)
{
	__u32 idx = slot & ~SE_PORT_OUT_HTTP;

	if (!idx || idx > SE_PORTS_MAX)
		return NULL;
	idx = gen * SE_PORTS_MAX + idx - 1;
	return bpf_map_lookup_elem(&inbound_ports, &idx);
}

/*
 * Whether the local socket of the connection of `p` (looked up as its client names it; a handshake's
 * request socket stands for its listener) runs in the cgroup `id` at `level` or below it; false when
 * there is no such socket. The socket's cgroup is read through BTF (sk_cgrp_data, the cgroup's
 * ancestors): TC programs have no helper for the cgroup of a socket that is not the skb's.
 */
static __always_inline bool socket_in_cgroup(struct __sk_buff *skb, const struct pkt *p, __u32 local_is_dst,
					     __u32 level, __u64 id)
{
	struct tcp_request_sock *treq;
	struct cgroup *cg, *anc = NULL;
	struct sock *full = NULL;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	bool in = false;

	if (local_is_dst)
		sk = lookup_tuple(skb, p->family, p->saddr, p->daddr, p->sport, p->dport);
	else
		sk = lookup_tuple(skb, p->family, p->daddr, p->saddr, p->dport, p->sport);
	if (!sk)
		return false;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		full = (struct sock *)tp;
	} else {
		treq = bpf_skc_to_tcp_request_sock(sk);
		if (treq)
			full = BPF_CORE_READ(treq, req.req.__req_common.skc_listener);
	}
	if (full && level < 256) {
		cg = BPF_CORE_READ(full, sk_cgrp_data.cgroup);
		if (cg && BPF_CORE_READ(cg, level) >= (int)level) {
			bpf_core_read(&anc, sizeof(anc), &cg->ancestors[level]);
			in = anc && BPF_CORE_READ(anc, kn, id) == id;
		}
	}
	bpf_sk_release(sk);
	return in;
}

/*
 * The slot of the scope of a port that governs a packet (see struct port_conf), 0 for none: the port's
 * entries from `gen_slot` (gen << 16 | the slot port_slots holds) on, the first whose scope holds the
 * connection: its local address (the destination when `local_is_dst`, else the source) and the cgroup
 * of its local socket. A global function: verified once, whatever path led to it.
 */
__noinline __u32 port_scope(struct __sk_buff *skb, const struct pkt *p, __u32 gen_slot, __u32 local_is_dst)
{
	__u16 slot = gen_slot;
	__u8 gen = gen_slot >> 16;

	if (!p)
		return 0;
	for (int i = 0; i < SE_PORT_SCOPES_MAX; i++) {
		struct port_conf *pc = port_lookup(slot, gen);
		const __u8 *a = local_is_dst ? p->daddr : p->saddr;
		bool in = true;

		if (!pc)
			return 0;
		if (pc->scope_family) {
			in = pc->scope_family == p->family;
			for (int b = 0; b < SE_ADDR_LEN; b++)
				in = in && (a[b] & pc->scope_mask[b]) == pc->scope_net[b];
		}
		if (in && pc->scope_cgroup_level)
			in = socket_in_cgroup(skb, p, local_is_dst, pc->scope_cgroup_level, pc->scope_cgroup_id);
		if (in)
			return slot & ~SE_PORT_OUT_HTTP;
		slot = pc->next;
	}
	return 0;
}

static __always_inline void port_count(__u16 port, __u32 what)
{
	struct port_counts *ps = bpf_map_lookup_elem(&port_stats, &port);

	if (ps && what < PORT_COUNTER_MAX)
		__sync_fetch_and_add(&ps->count[what], 1);
}

static __always_inline void make_key(struct flow_key *k, const struct pkt *p, bool from_client, __u8 kind)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (from_client) {
		__builtin_memcpy(k->saddr, p->saddr, SE_ADDR_LEN);
		__builtin_memcpy(k->daddr, p->daddr, SE_ADDR_LEN);
		k->sport = p->sport;
		k->dport = p->dport;
	} else {
		__builtin_memcpy(k->saddr, p->daddr, SE_ADDR_LEN);
		__builtin_memcpy(k->daddr, p->saddr, SE_ADDR_LEN);
		k->sport = p->dport;
		k->dport = p->sport;
	}
	k->family = p->family;
	k->kind = kind;
}

/* Sentinel's checks in order (flow, isolation); returns the block type or BLOCK_NONE. */
/*
 * Hash of rule `rule`'s header or query parameter in the request, left in param_scratch.hash; returns
 * PARAM_ABSENT (0), PARAM_FOUND, or PARAM_UNSEEN (hash HOT_UNSEEN_HASH: the parameter may lie past what
 * was read, or its value was cut before SE_HOT_VALUE_MAX bytes). A global function: the verifier checks
 * its loops once.
 */
__noinline int hot_param_hash(struct __sk_buff *skb, __u32 conf_idx, __u32 rule_and_load, __u32 payload_off,
			      __u32 payload_len)
{
	__u32 rule = rule_and_load & 0xff, load = rule_and_load >> 8;
	__u32 zero = 0;
	struct param_scan *scan = bpf_map_lookup_elem(&param_scratch, &zero);
	struct res_conf *rc = bpf_map_lookup_elem(&res_conf, &conf_idx);
	const struct hotspot_rule_k *r;

	if (!skb || !scan || !rc || rule >= SE_HOTSPOT_RULES_PER_RESOURCE)
		return 0;
	r = &rc->hot[rule];
	if (load) {
		__u32 n = payload_len < SE_PARAM_PEEK ? payload_len : SE_PARAM_PEEK;

		if (n == 0)
			return 0;
		n = ((n - 1) & (SE_PARAM_PEEK - 1)) + 1;
		if (bpf_skb_load_bytes(skb, payload_off, scan->buf, n))
			return 0;
		scan->len = n;
	}
	int found = find_param(scan, r);

	if (found == PARAM_ABSENT)
		return PARAM_ABSENT;
	if (found == PARAM_FOUND) {
		scan->hash = hash_value(scan, r->param == HOT_HEADER);
		if (scan->found == 2 || scan->hashed >= SE_HOT_VALUE_MAX)
			return PARAM_FOUND; /* the value's end, or as much of it as any value is keyed by */
	}
	scan->hash = HOT_UNSEEN_HASH;
	return PARAM_UNSEEN;
}

/* Hotspot rules of the resource: keys of Concurrency rules' values go to `held` (released on completion). */
static __always_inline __u32 check_hotspot(const struct res_conf *rc, __u32 conf_idx, struct __sk_buff *skb,
					   const struct pkt *p, __u32 req_off, __u64 now_ns, struct hot_key *held)
{
	__u32 zero = 0;
	bool loaded = false;

	for (int i = 0; i < SE_HOTSPOT_RULES_PER_RESOURCE; i++) {
		const struct hotspot_rule_k *r = &rc->hot[i];
		struct hot_key k = { .uid = r->uid };

		if (i >= rc->nhot)
			break;
		if (r->param == HOT_REMOTE_IP) {
			k.hash = hash_addr(p->saddr, p->family, r->v6_prefix_len);
		} else {
			struct param_scan *scan;

			if (req_off >= p->payload_len)
				continue; /* no request to read the parameter from: the rule does not apply */
			int got = hot_param_hash(skb, conf_idx, i | (!loaded << 8), p->payload_off + req_off,
						 p->payload_len - req_off);

			if (got == PARAM_ABSENT)
				continue; /* parameter absent: as in Sentinel, the rule does not apply */
			if (got == PARAM_UNSEEN)
				percpu_inc(&dp_counters, DP_HOT_UNSEEN);
			loaded = true;
			scan = bpf_map_lookup_elem(&param_scratch, &zero);
			if (!scan)
				continue;
			k.hash = scan->hash;
		}
		int v = hot_check(r, &k, now_ns);

		if (v == HOT_BLOCK)
			return BLOCK_HOTSPOT;
		if (v == HOT_PASS_CONTENDED)
			percpu_inc(&dp_counters, DP_THROTTLE_CONTENDED);
		if (r->metric == 0)
			held[i] = k;
	}
	return BLOCK_NONE;
}

/* The resource's circuit breakers, last in the chain; 1 when one blocks. A global function: verified once. */
__noinline int breakers_check(__u32 conf_idx, __u32 resource, __u64 now_ms)
{
	struct res_conf *rc = bpf_map_lookup_elem(&res_conf, &conf_idx);
	bool probed0 = false, probed1 = false;

	if (!rc || rc->nbreakers == 0)
		return 0;
	if (!cb_try_pass(&rc->breakers[0], resource, now_ms, &probed0))
		return 1;
	if (rc->nbreakers < 2)
		return 0;
	if (!cb_try_pass(&rc->breakers[1], resource, now_ms, &probed1)) {
		if (probed0)
			cb_rollback(&rc->breakers[0], resource, now_ms);
		return 1;
	}
	return 0;
}

/* A request or connection of the resource completed: feed its breakers. */
__noinline int breakers_complete(__u32 conf_idx, __u32 resource, __u64 now_ms, __u64 rt_ms, __u32 error)
{
	struct res_conf *rc = bpf_map_lookup_elem(&res_conf, &conf_idx);

	if (!rc)
		return 0;
	for (int i = 0; i < SE_BREAKERS_PER_RESOURCE; i++) {
		if (i >= rc->nbreakers)
			break;
		cb_on_complete(&rc->breakers[i], resource, now_ms, rt_ms, error);
	}
	return 0;
}

/* Flow rules then isolation: the checks inbound and outbound resources share. */
static __always_inline __u32 check_flow_isolation(__u32 res, __u32 idx, struct res_conf *rc, struct res_stats *st,
						  __u64 now)
{
	__u64 now_ms = now / 1000000;

	for (int i = 0; i < SE_FLOW_RULES_PER_RESOURCE; i++) {
		const struct flow_rule_k *r = &rc->flow[i];

		if (i >= rc->nflow)
			break;
		__u64 threshold_milli = r->threshold_milli, cost_ns = r->cost_ns;

		if (r->dynamic) {
			__u32 didx = idx * SE_FLOW_RULES_PER_RESOURCE + i;
			__u64 *dyn = bpf_map_lookup_elem(&flow_dyn_threshold, &didx);

			threshold_milli = dyn ? *dyn : 0;
			/* ns per request = interval / threshold */
			cost_ns = threshold_milli ?
				  ((__u64)r->interval_ms * 1000000000ULL + threshold_milli - 1) / threshold_milli : 0;
		}
		if (r->behavior == FLOW_THROTTLING) {
			__u64 waited = 0;

			if (!throttle_admit(&rc->last_passed_ns[i], r, cost_ns, now, &waited))
				return BLOCK_FLOW;
			if (waited == 2)
				percpu_inc(&dp_counters, DP_THROTTLE_CONTENDED);
			else if (waited)
				__sync_fetch_and_add(&st->flow_wait, 1);
			continue;
		}
		struct res_stats *sst = st;
		__u32 sres = r->stat_resource;

		if (sres != res) {
			sst = bpf_map_lookup_elem(&res_stats, &sres);
			if (!sst)
				continue;
		}
		if (!reject_admit(sst, r, threshold_milli, now_ms))
			return BLOCK_FLOW;
	}
	if (rc->isolation_threshold && st->concurrency + 1 > (__s64)rc->isolation_threshold)
		return BLOCK_ISOLATION;
	return BLOCK_NONE;
}

static __always_inline __u32 check_resource(__u32 res, __u8 gen, struct res_stats *st, __u64 now,
					    struct __sk_buff *skb, const struct pkt *p, __u32 req_off,
					    struct hot_key *held)
{
	__u32 idx = gen * SE_MAX_RESOURCES + res;
	struct res_conf *rc = bpf_map_lookup_elem(&res_conf, &idx);
	__u64 now_ms = now / 1000000;
	__u32 v;

	if (!rc)
		return BLOCK_NONE;
	v = check_flow_isolation(res, idx, rc, st, now);
	if (v != BLOCK_NONE)
		return v;
	if (rc->nhot) {
		v = check_hotspot(rc, idx, skb, p, req_off, now, held);
		if (v != BLOCK_NONE)
			return v;
	}
	if (rc->nbreakers && breakers_check(idx, res, now_ms))
		return BLOCK_CIRCUIT_BREAKING;
	return BLOCK_NONE;
}

static __always_inline struct res_stats *inbound_node(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&inbound_total, &zero);
}

/* The system rules of generation `gen`; 1 when one blocks. A global function: verified once. */
__noinline int system_check(__u32 gen, __u64 now_ms)
{
	__u32 zero = 0;
	struct sys_conf *sc = bpf_map_lookup_elem(&sys_conf, &gen);
	struct res_stats *in = inbound_node();
	struct sys_metrics *m = bpf_map_lookup_elem(&sys_metrics, &zero);

	/* m checked here, before system_admit computes field addresses (5.x/6.1 refuse arithmetic on
	 * a pointer that may be NULL) */
	if (!sc || !in || !m)
		return 0;
	return !system_admit(sc, in, m, now_ms);
}

/* judge() flags, beside the generation in its second argument. */
#define JUDGE_HTTP (1 << 8)
#define JUDGE_SYSTEM_BLOCKED (1 << 9)   /* the system rules block inbound traffic now */
#define JUDGE_INBOUND_NODE (1 << 10)    /* system rules are in force: keep the inbound node's statistics */
#define JUDGE_EGRESS (1 << 11)          /* the key is in egress_scratch (else ingress_scratch) */

/*
 * JUDGE_SYSTEM_BLOCKED when the system rules of `gen` block inbound traffic now. Checked by the caller
 * before judge(), so that no path nests three function frames (the stacks add up to at most 512 bytes).
 */
static __always_inline __u32 system_flag(__u8 gen)
{
	__u32 idx = gen;
	struct sys_conf *sc = bpf_map_lookup_elem(&sys_conf, &idx);

	if (!sc || !sc->nrules)
		return 0;
	return JUDGE_INBOUND_NODE | (system_check(gen, now_ns() / 1000000) ? JUDGE_SYSTEM_BLOCKED : 0);
}

/* Admit or block one request of `res`; on pass, track it as in flight under `key`. */
static __always_inline void hot_release(const struct hot_key *held)
{
	for (int i = 0; i < SE_HOTSPOT_RULES_PER_RESOURCE; i++) {
		struct hot_state *hs;

		if (!held[i].uid)
			continue;
		hs = bpf_map_lookup_elem(&hot_values, &held[i]);
		if (hs)
			__sync_fetch_and_add(&hs->concurrency, -1);
	}
}

/* A request or connection starts: it counts in the concurrency of its resource, the inbound node (`in`;
 * NULL for outbound requests and while no system rule is in force) and the hotspot values it holds. */
static __always_inline void hold(struct res_stats *st, struct res_stats *in, const struct hot_key *hot)
{
	__sync_fetch_and_add(&st->concurrency, 1);
	if (in)
		__sync_fetch_and_add(&in->concurrency, 1);
	for (int i = 0; i < SE_HOTSPOT_RULES_PER_RESOURCE; i++) {
		struct hot_state *hs = hot[i].uid ? bpf_map_lookup_elem(&hot_values, &hot[i]) : NULL;

		if (hs)
			__sync_fetch_and_add(&hs->concurrency, 1);
	}
}

/* judge()'s answer when the connection has SE_QUEUED_MAX requests in flight already (nothing counted). */
#define JUDGE_QUEUE_FULL 0xfe

/*
 * A request judged while its connection's last one is still in flight (HTTP pipelining): it waits in the
 * connection's inflight_queue entry, behind `head`, until the responses before it are seen (complete()
 * then makes it the one in flight). Its concurrency is held from now on, as Sentinel's entry would be:
 * before, it took the connection's one entry over and the request in flight stopped counting, so that
 * pipelining a cheap request behind a slow one took the slow one out of its resource's concurrency.
 * `flags`: 1 counted in the inbound node, 2 HTTP; `entry`: its hotspot values. 0 when queued, -1 when
 * the queue is full or could not be made. A global function (judge()'s frame is large).
 */
__noinline int queue_request(struct inflight *head, __u32 res, __u32 flags, const struct inflight *entry)
{
	struct flow_key *key = scratch_key(false);
	struct inflight_queue *q;
	struct queued_request *r;
	__u32 zero = 0, tail;

	if (!head || !entry || !key)
		return -1;
	tail = head->q_tail;
	if (tail - head->q_head >= SE_QUEUED_MAX)
		return -1;
	q = bpf_map_lookup_elem(&inflight_queue, key);
	if (!q) {
		struct inflight_queue *empty = bpf_map_lookup_elem(&queue_zero, &zero);

		if (!empty)
			return -1;
		bpf_map_update_elem(&inflight_queue, key, empty, BPF_NOEXIST);
		q = bpf_map_lookup_elem(&inflight_queue, key);
		if (!q)
			return -1;
	}
	r = &q->q[tail & (SE_QUEUED_MAX - 1)];
	r->start_ns = now_ns();
	r->resource = res;
	r->inbound = flags & 1;
	r->is_http = !!(flags & 2);
	__builtin_memcpy(r->hot, entry->hot, sizeof(r->hot));
	head->q_tail = tail + 1;
	return 0;
}

/* The connection under ingress scratch's key has SE_QUEUED_MAX requests waiting behind the one in flight.
 * A global function: judge() gets a number, not a pointer whose two states double its paths. */
__noinline int queue_full(void)
{
	struct flow_key *key = scratch_key(false);
	struct inflight *f = key ? bpf_map_lookup_elem(&inflight, key) : NULL;

	return f && f->active == INFLIGHT_ACTIVE && f->q_tail - f->q_head >= SE_QUEUED_MAX;
}

/* Adjust the idle-entry count; returns the count before. */
static __always_inline __s64 idle_add(__s64 d)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&inflight_idle, &zero);

	return n ? __sync_fetch_and_add(n, d) : inflight_idle_max;
}

/*
 * Admit or block one request or connection of `res` (gen_flags: the generation | JUDGE_* flags): system
 * rules first (they guard all inbound traffic; the caller checked them), then the resource's own rules.
 * On pass, track it as in flight under the scratch's key (see scratch_key). A global function: the
 * verifier checks it once, not once per path that leads to it.
 */
__noinline __u32 judge(__u32 res, __u32 gen_flags, struct __sk_buff *skb, const struct pkt *p)
{
	__u8 gen = gen_flags & 1, is_http = !!(gen_flags & JUDGE_HTTP);
	struct flow_key *key = scratch_key(gen_flags & JUDGE_EGRESS);
	struct inflight entry = {};
	struct res_stats *st, *in;
	__u64 now, now_ms;
	__u32 verdict;

	if (!key || !skb || !p)
		return BLOCK_NONE;
	st = bpf_map_lookup_elem(&res_stats, &res);
	if (!st)
		return BLOCK_NONE;
	/* Only the system rules read the inbound node: without them it is not kept (its atomics would be
	 * paid by every request). Outbound requests are not inbound traffic. */
	in = key->kind != FLOW_KIND_OUT_REQUEST && (gen_flags & JUDGE_INBOUND_NODE) ? inbound_node() : NULL;
	if (key->kind == FLOW_KIND_REQUEST && queue_full())
		return JUDGE_QUEUE_FULL; /* (judged when it comes again, once responses were seen) */
	now = now_ns();
	now_ms = now / 1000000;
	verdict = in && (gen_flags & JUDGE_SYSTEM_BLOCKED) ? BLOCK_SYSTEM :
		  check_resource(res, gen, st, now, skb, p, ((struct ingress_scratch *)key)->req_off, entry.hot);
	if (verdict != BLOCK_NONE) {
		stat_block(st, now_ms, verdict);
		if (in)
			stat_block(in, now_ms, verdict);
		return verdict;
	}
	stat_pass(st, now_ms);
	if (in)
		stat_pass(in, now_ms);

	struct inflight *old = bpf_map_lookup_elem(&inflight, key);

	if (old) {
		/* No map update on this path: the connection's entry is taken over in place. */
		if (__sync_val_compare_and_swap(&old->active, 0, 1) == 0) {
			idle_add(-1); /* idle since its last response: this request reuses it */
		} else if (key->kind == FLOW_KIND_REQUEST &&
			   queue_request(old, res, !!in | is_http << 1, &entry) == 0) {
			hold(st, in, entry.hot); /* pipelined behind the one in flight */
			return BLOCK_NONE;
		} else if (old->resource == res && !old->hot[0].uid && !old->hot[1].uid && !entry.hot[0].uid &&
			   !entry.hot[1].uid) {
			/* the same resource is still in flight on this tuple: one request ends and one starts,
			 * so the concurrency counts stay */
			old->start_ns = now;
			old->is_http = is_http;
			return BLOCK_NONE;
		} else {
			/* a request without a seen response (an outbound caller's pipelining, a lost segment, a
			 * connection's queue that could not be made): it no longer counts */
			struct res_stats *ost = bpf_map_lookup_elem(&res_stats, &old->resource);
			struct res_stats *oin = old->inbound ? inbound_node() : NULL;

			if (ost)
				__sync_fetch_and_add(&ost->concurrency, -1);
			if (oin)
				__sync_fetch_and_add(&oin->concurrency, -1);
			hot_release(old->hot);
		}
		old->start_ns = now;
		old->resource = res;
		old->is_http = is_http;
		old->inbound = !!in;
		old->client_closed = 0;
		__builtin_memcpy(old->hot, entry.hot, sizeof(entry.hot));
		hold(st, in, entry.hot);
		return BLOCK_NONE;
	}
	bool pending = key->kind == FLOW_KIND_CONNECTION && establish_hooked();

	entry.start_ns = now;
	entry.active = pending ? INFLIGHT_PENDING : INFLIGHT_ACTIVE;
	entry.resource = res;
	entry.is_http = is_http;
	entry.inbound = !!in;
	if (bpf_map_update_elem(&inflight, key, &entry, BPF_ANY) == 0) {
		if (!pending)
			hold(st, in, entry.hot);
	} else
		percpu_inc(&dp_counters, DP_INFLIGHT_FULL);
	return BLOCK_NONE;
}

/* complete()'s flags */
#define COMPLETE_ERROR 1            /* the request failed (5xx, or no response before the close) */
#define COMPLETE_END 2              /* the connection ended: its entry goes */
#define COMPLETE_EGRESS 4           /* the key is in egress_scratch (else ingress_scratch) */
#define COMPLETE_ABORT 8            /* the client reset the connection: an abort, not an error */
#define COMPLETE_CLIENT_FIN 16      /* the client sent FIN: its request may still be answered */
#define COMPLETE_NO_ANSWER 32       /* the server closed without answering (an abort after COMPLETE_CLIENT_FIN) */

/* The request in flight `f` got its response (or failed: `error`): its statistics, its slots given back. */
static __always_inline void finish(struct inflight *f, bool error)
{
	struct res_stats *st = bpf_map_lookup_elem(&res_stats, &f->resource);
	struct res_stats *in = f->inbound ? inbound_node() : NULL;
	__u64 now = now_ns(), rt_ms = now > f->start_ns ? (now - f->start_ns) / 1000000 : 0;

	if (st) {
		stat_complete(st, now / 1000000, rt_ms, error);
		__sync_fetch_and_add(&st->concurrency, -1);
	}
	if (in) {
		stat_complete(in, now / 1000000, rt_ms, error);
		__sync_fetch_and_add(&in->concurrency, -1);
	}
	hot_release(f->hot);
	breakers_complete(current_gen() * SE_MAX_RESOURCES + f->resource, f->resource, now / 1000000, rt_ms, error);
}

/* The requests queued behind `f` (pipelining), of connection `key`, end unanswered with it: aborts, their
 * slots given back (breakers never see them). */
static __always_inline void release_queue_of(struct inflight *f, const struct flow_key *key)
{
	struct inflight_queue *q = bpf_map_lookup_elem(&inflight_queue, key);

	for (int i = 0; i < SE_QUEUED_MAX; i++) {
		__u32 h = f->q_head;
		struct queued_request *r;
		struct res_stats *st;

		if (h == f->q_tail)
			break;
		f->q_head = h + 1;
		if (!q)
			continue; /* evicted: the counts are repaired by the reconciliation */
		r = &q->q[h & (SE_QUEUED_MAX - 1)];
		st = bpf_map_lookup_elem(&res_stats, &r->resource);
		if (st) {
			__sync_fetch_and_add(&st->total_abort, 1);
			__sync_fetch_and_add(&st->concurrency, -1);
		}
		if (r->inbound) {
			st = inbound_node();
			if (st)
				__sync_fetch_and_add(&st->concurrency, -1);
		}
		hot_release(r->hot);
	}
	f->q_head = f->q_tail;
	if (q)
		bpf_map_delete_elem(&inflight_queue, key);
}

/* release_queue_of() for the connection under the scratch's key (see scratch_key). A global function. */
__noinline int release_queued(struct inflight *f, __u32 egress)
{
	struct flow_key *key = scratch_key(egress);

	if (f && key && f->q_head != f->q_tail)
		release_queue_of(f, key);
	return 0;
}

/*
 * The in-flight request or connection under the scratch's key (see scratch_key) ended (COMPLETE_* flags
 * in `how`). A request's entry stays, idle, for the connection's next request unless the connection ended
 * or too many are idle; when requests are queued behind it (pipelining), the first of them is in flight
 * next, in the entry. A global function: verified once, small frames.
 */
__noinline int complete(__u32 how)
{
	struct flow_key *key = scratch_key(how & COMPLETE_EGRESS);
	struct inflight_queue *q;
	struct queued_request *r;
	struct inflight *f;
	struct res_stats *st, *in;
	bool error = how & COMPLETE_ERROR;

	if (!key)
		return 0;
	f = bpf_map_lookup_elem(&inflight, key);
	if (!f)
		return 0;
	if (f->active == INFLIGHT_PENDING) {
		/* a connection that ends before its handshake completed never took a slot */
		if (how & COMPLETE_END)
			bpf_map_delete_elem(&inflight, key);
		return 0;
	}
	if ((how & COMPLETE_CLIENT_FIN) && f->active) {
		/* half-closed: the response (or the server's close) completes the request */
		f->client_closed = 1;
		return 0;
	}
	if (f->q_head != f->q_tail && f->active == INFLIGHT_ACTIVE && !(how & (COMPLETE_END | COMPLETE_ABORT))) {
		/* a response, with requests queued behind: the next one is in flight now (the entry stays
		 * active, so that a request judged meanwhile queues behind it) */
		finish(f, error);
		q = bpf_map_lookup_elem(&inflight_queue, key);
		if (q) {
			r = &q->q[f->q_head & (SE_QUEUED_MAX - 1)];
			f->start_ns = r->start_ns;
			f->resource = r->resource;
			f->inbound = r->inbound;
			f->is_http = r->is_http;
			__builtin_memcpy(f->hot, r->hot, sizeof(f->hot));
			if (++f->q_head == f->q_tail)
				bpf_map_delete_elem(&inflight_queue, key); /* drained: no entry outlives its queue */
			return 0;
		}
		/* (the queue was evicted: its requests' counts are repaired by the reconciliation) */
		f->q_head = f->q_tail;
		__builtin_memset(f->hot, 0, sizeof(f->hot));
		if (__sync_val_compare_and_swap(&f->active, 1, 0) == 1 && idle_add(1) >= inflight_idle_max) {
			idle_add(-1);
			bpf_map_delete_elem(&inflight, key);
		}
		return 0;
	}
	if (__sync_val_compare_and_swap(&f->active, 1, 0) != 1) {
		/* idle already: nothing in flight to complete */
		if (how & (COMPLETE_END | COMPLETE_CLIENT_FIN)) {
			idle_add(-1);
			bpf_map_delete_elem(&inflight, key);
		}
		return 0;
	}
	if ((how & COMPLETE_ABORT) || ((how & COMPLETE_NO_ANSWER) && f->client_closed)) {
		/* the client gave up before the response: not the server's error, breakers never see it */
		st = bpf_map_lookup_elem(&res_stats, &f->resource);
		in = f->inbound ? inbound_node() : NULL;
		if (st) {
			__sync_fetch_and_add(&st->total_abort, 1);
			__sync_fetch_and_add(&st->concurrency, -1);
		}
		if (in)
			__sync_fetch_and_add(&in->concurrency, -1);
		hot_release(f->hot);
		release_queued(f, how & COMPLETE_EGRESS);
		bpf_map_delete_elem(&inflight, key);
		return 0;
	}
	finish(f, error);
	if (!(how & COMPLETE_END)) {
		if (idle_add(1) < inflight_idle_max) {
			__builtin_memset(f->hot, 0, sizeof(f->hot));
			return 0;
		}
		idle_add(-1);
	}
	release_queued(f, how & COMPLETE_EGRESS);
	bpf_map_delete_elem(&inflight, key);
	return 0;
}

#endif /* SENTINEL_JUDGE_BPF_H */

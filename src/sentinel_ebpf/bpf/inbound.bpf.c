// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Inbound governance at TC: ingress counts and judges new connections (SYN) to TCP resources and HTTP
 * requests (request line at the start of a segment) to HTTP resources; egress sees the responses'
 * status lines to complete requests (RT, 5xx errors, concurrency). Rules and resources arrive in maps
 * written by the control plane; everything that cannot be classified passes and is counted.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sentinel.h"
#include "maps.bpf.h"
#include "parse.bpf.h"
#include "stat.bpf.h"
#include "flow.bpf.h"
#include "reject.bpf.h"
#include "system.bpf.h"
#include "hotspot.bpf.h"
#include "breaker.bpf.h"

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);               /* [0] the generation in force, 0 or 1; [1] enum route_flags features */
} active_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * SE_PORTS_MAX);
	__type(key, struct port_key);       /* a remote port of outbound HTTP resources */
	__type(value, __u32);
} out_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * SE_PORTS_MAX);
	__type(key, struct port_key);
	__type(value, struct port_conf);
} inbound_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SE_PORTS_MAX);
	__type(key, __u16);
	__type(value, struct port_counts);
} port_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 2 * SE_HTTP_ROUTES_MAX);   /* two generations during a reload */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct http_route_key);
	__type(value, __u32);               /* resource id */
} http_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SE_MAX_RESOURCES);
	__type(key, __u32);
	__type(value, struct res_conf);
} res_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SE_MAX_RESOURCES);
	__type(key, __u32);
	__type(value, struct res_stats);
} res_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SE_MAX_RESOURCES * SE_FLOW_RULES_PER_RESOURCE);
	__type(key, __u32);
	__type(value, __u64);
} flow_dyn_threshold SEC(".maps");

/* Sentinel's inbound node: every inbound request of every resource, for the system rules. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct res_stats);
} inbound_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);             /* one per generation */
	__type(key, __u32);
	__type(value, struct sys_conf);
} sys_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sys_metrics);
} sys_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_INFLIGHT_MAX);
	__type(key, struct flow_key);
	__type(value, struct inflight);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} dp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);             /* [gen] inbound reject, [HTTP_REPLY_OUTBOUND + gen] outbound 503 */
	__type(key, __u32);
	__type(value, struct http_reply);
} http_reply SEC(".maps");

/* Parsed packets live here, not on the 512-byte stack (TC ingress only: egress has its own). */
struct ingress_scratch {
	struct pkt p;
	struct pkt reply;           /* the reply's view, when a request is answered */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ingress_scratch);
} ingress_scratch SEC(".maps");

/* Egress has its own, so nothing depends on ingress and egress never nesting on one CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ingress_scratch);
} egress_scratch SEC(".maps");

struct peek {
	__u8 buf[SE_REQ_PEEK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct peek);
} peek_scratch SEC(".maps");

/* Keep contract types in BTF for the generated Python layouts. */
const enum block_type _block_type_unused __attribute__((unused)) = BLOCK_NONE;
const enum reject_mode _reject_mode_unused __attribute__((unused)) = REJECT_HTTP_REPLY;
const enum http_method _http_method_unused __attribute__((unused)) = HTTP_METHOD_NONE;
const enum flow_behavior _flow_behavior_unused __attribute__((unused)) = FLOW_REJECT;
const enum port_counter _port_counter_unused __attribute__((unused)) = PORT_TLS;
const enum dp_counter _dp_counter_unused __attribute__((unused)) = DP_PACKETS;
const enum flow_kind _flow_kind_unused __attribute__((unused)) = FLOW_KIND_CONNECTION;
const enum system_metric _system_metric_unused __attribute__((unused)) = SYS_LOAD;
const enum route_flags _route_flags_unused __attribute__((unused)) = ROUTE_OUTBOUND;
const enum hot_param _hot_param_unused __attribute__((unused)) = HOT_REMOTE_IP;
const enum cb_strategy _cb_strategy_unused __attribute__((unused)) = CB_SLOW_REQUEST_RATIO;
const enum cb_state_kind _cb_state_unused __attribute__((unused)) = CB_CLOSED;
const struct cb_event _cb_event_unused __attribute__((unused)) = {};

static __always_inline __u8 current_gen(void)
{
	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&active_gen, &zero);

	return gen && *gen ? 1 : 0;
}

static __always_inline struct port_conf *port_lookup(__u16 port, __u8 gen)
{
	struct port_key k = { .port = port, .gen = gen };

	return bpf_map_lookup_elem(&inbound_ports, &k);
}

static __always_inline bool outbound_http_port(__u16 port, __u8 gen)
{
	__u32 flags_idx = ACTIVE_GEN_FLAGS;
	__u32 *flags = bpf_map_lookup_elem(&active_gen, &flags_idx);
	struct port_key k = { .port = port, .gen = gen };

	return flags && (*flags & FEATURE_OUTBOUND_HTTP) && bpf_map_lookup_elem(&out_ports, &k);
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
 * Hash of rule `rule`'s header or query parameter in the request, left in param_scratch.hash; returns 0
 * when the parameter is absent. A global function: the verifier checks its loops once.
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
	if (!find_param(scan, r))
		return 0;
	scan->hash = fnv1a(scan->buf, scan->vstart, scan->vend, r->param == HOT_HEADER);
	return 1;
}

/* Hotspot rules of the resource: keys of Concurrency rules' values go to `held` (released on completion). */
static __always_inline __u32 check_hotspot(const struct res_conf *rc, __u32 conf_idx, struct __sk_buff *skb,
					   const struct pkt *p, __u64 now_ms, struct hot_key *held)
{
	__u32 zero = 0;
	bool loaded = false;

	for (int i = 0; i < SE_HOTSPOT_RULES_PER_RESOURCE; i++) {
		const struct hotspot_rule_k *r = &rc->hot[i];
		struct hot_key k = { .uid = r->uid };

		if (i >= rc->nhot)
			break;
		if (r->param == HOT_REMOTE_IP) {
			k.hash = hash_addr(p->saddr);
		} else {
			struct param_scan *scan;

			if (!p->payload_len)
				continue; /* no request to read the parameter from: the rule does not apply */
			if (!hot_param_hash(skb, conf_idx, i | (!loaded << 8), p->payload_off, p->payload_len))
				continue; /* parameter absent: as in Sentinel, the rule does not apply */
			loaded = true;
			scan = bpf_map_lookup_elem(&param_scratch, &zero);
			if (!scan)
				continue;
			k.hash = scan->hash;
		}
		if (hot_check(r, &k, now_ms) == HOT_BLOCK)
			return BLOCK_HOTSPOT;
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
			if (waited)
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
					    struct __sk_buff *skb, const struct pkt *p, struct hot_key *held)
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
		v = check_hotspot(rc, idx, skb, p, now_ms, held);
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

/* System rules first (they guard all inbound traffic), then the resource's own rules. */
static __always_inline __u32 check_all(__u32 res, __u8 gen, struct res_stats *st, struct res_stats *in, __u64 now,
				       struct __sk_buff *skb, const struct pkt *p, struct hot_key *held)
{
	__u32 idx = gen, zero = 0;
	struct sys_conf *sc = bpf_map_lookup_elem(&sys_conf, &idx);

	if (sc && sc->nrules && in &&
	    !system_admit(sc, in, bpf_map_lookup_elem(&sys_metrics, &zero), now / 1000000))
		return BLOCK_SYSTEM;
	return check_resource(res, gen, st, now, skb, p, held);
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

static __always_inline __u32 judge(__u32 res, __u8 gen, const struct flow_key *key, __u8 is_http,
				   struct __sk_buff *skb, const struct pkt *p)
{
	struct inflight entry = {};
	struct res_stats *st = bpf_map_lookup_elem(&res_stats, &res);
	/* outbound requests are not inbound traffic: no system rules, no inbound node statistics */
	struct res_stats *in = key->kind == FLOW_KIND_OUT_REQUEST ? NULL : inbound_node();
	__u64 now = now_ns();
	__u64 now_ms = now / 1000000;
	__u32 verdict;

	if (!st)
		return BLOCK_NONE;
	verdict = check_all(res, gen, st, in, now, skb, p, entry.hot);
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
		/* a request without a seen response (pipelining, lost segment): it no longer counts as in flight */
		struct res_stats *ost = bpf_map_lookup_elem(&res_stats, &old->resource);

		if (ost)
			__sync_fetch_and_add(&ost->concurrency, -1);
		if (in)
			__sync_fetch_and_add(&in->concurrency, -1);
		hot_release(old->hot);
	}
	entry.start_ns = now;
	entry.resource = res;
	entry.is_http = is_http;
	if (bpf_map_update_elem(&inflight, key, &entry, BPF_ANY) == 0) {
		__sync_fetch_and_add(&st->concurrency, 1);
		if (in)
			__sync_fetch_and_add(&in->concurrency, 1);
		for (int i = 0; i < SE_HOTSPOT_RULES_PER_RESOURCE; i++) {
			struct hot_state *hs = entry.hot[i].uid ? bpf_map_lookup_elem(&hot_values, &entry.hot[i]) : NULL;

			if (hs)
				__sync_fetch_and_add(&hs->concurrency, 1);
		}
	} else {
		percpu_inc(&dp_counters, DP_INFLIGHT_FULL);
	}
	return BLOCK_NONE;
}

/* The in-flight request or connection under `key` ended. */
static __always_inline void complete(const struct flow_key *key, bool error)
{
	struct inflight *f = bpf_map_lookup_elem(&inflight, key);
	struct res_stats *st, *in;
	__u64 now, rt_ms;

	if (!f)
		return;
	st = bpf_map_lookup_elem(&res_stats, &f->resource);
	in = key->kind == FLOW_KIND_OUT_REQUEST ? NULL : inbound_node();
	now = now_ns();
	rt_ms = now > f->start_ns ? (now - f->start_ns) / 1000000 : 0;
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
	bpf_map_delete_elem(&inflight, key);
}

static __always_inline bool bytes_eq(const __u8 *buf, const char *lit, int n)
{
	for (int i = 0; i < n; i++)
		if (buf[i] != (__u8)lit[i])
			return false;
	return true;
}

/* Method at the start of a request line; *len covers the method and its space. */
static __always_inline __u8 parse_method(const __u8 *b, __u32 *len)
{
	switch (b[0]) {
	case 'G':
		if (bytes_eq(b, "GET ", 4)) { *len = 4; return HTTP_GET; }
		break;
	case 'H':
		if (bytes_eq(b, "HEAD ", 5)) { *len = 5; return HTTP_HEAD; }
		break;
	case 'P':
		if (bytes_eq(b, "POST ", 5)) { *len = 5; return HTTP_POST; }
		if (bytes_eq(b, "PUT ", 4)) { *len = 4; return HTTP_PUT; }
		if (bytes_eq(b, "PATCH ", 6)) { *len = 6; return HTTP_PATCH; }
		break;
	case 'D':
		if (bytes_eq(b, "DELETE ", 7)) { *len = 7; return HTTP_DELETE; }
		break;
	case 'C':
		if (bytes_eq(b, "CONNECT ", 8)) { *len = 8; return HTTP_CONNECT; }
		break;
	case 'O':
		if (bytes_eq(b, "OPTIONS ", 8)) { *len = 8; return HTTP_OPTIONS; }
		break;
	case 'T':
		if (bytes_eq(b, "TRACE ", 6)) { *len = 6; return HTTP_TRACE; }
		break;
	}
	return HTTP_METHOD_NONE;
}

/* Read the first bytes of the payload; returns how many (0 on failure). */
static __always_inline __u32 peek_payload(struct __sk_buff *skb, const struct pkt *p, struct peek *pk)
{
	__u32 n = p->payload_len < SE_REQ_PEEK ? p->payload_len : SE_REQ_PEEK;

	if (n == 0)
		return 0;
	n = ((n - 1) & (SE_REQ_PEEK - 1)) + 1; /* same value; a range [1, SE_REQ_PEEK] the verifier can see */
	if (bpf_skb_load_bytes(skb, p->payload_off, pk->buf, n))
		return 0;
	return n;
}

/* Ingress from a server of outbound HTTP resources: the status line completes the local caller's request. */
static __always_inline void out_response(struct __sk_buff *skb, const struct pkt *p)
{
	struct flow_key fk;
	__u32 zero = 0;

	make_key(&fk, p, false, FLOW_KIND_OUT_REQUEST);
	if (p->flags & (TCP_RST | TCP_FIN)) {
		complete(&fk, true); /* the server closed without answering */
		return;
	}
	if (!p->payload_len)
		return;
	struct peek *pk = bpf_map_lookup_elem(&peek_scratch, &zero);
	if (!pk || peek_payload(skb, p, pk) < 12 || !bytes_eq(pk->buf, "HTTP/1.", 7))
		return;
	complete(&fk, pk->buf[9] == '5');
}

/*
 * Answer a blocked request or SYN. Inbound (TC ingress): the reply goes back out of the device to the
 * client and the server gets a RST in place of the request. Outbound (TC egress, `outbound`): the reply
 * is cloned into the device's ingress so the local caller receives it, and the RST goes on to the server.
 */
static __always_inline int reject(struct __sk_buff *skb, const struct pkt *p, __u8 mode, bool syn, __u8 gen,
				  bool outbound, struct ingress_scratch *scr)
{
	__u32 clone_flags = outbound ? BPF_F_INGRESS : 0;

	if (mode == REJECT_DROP)
		return TC_ACT_SHOT;
	if (syn) {
		/* RST|ACK for the SYN: seq 0, ack = ISN + 1; the SYN never reaches the server */
		if (rewrite_to_rst(skb, p, 0, p->seq + 1, true))
			goto fail;
		percpu_inc(&dp_counters, DP_RST_SENT);
		return bpf_redirect(skb->ifindex, 0);
	}
	if (mode == REJECT_HTTP_REPLY && p->payload_len <= SE_REPLY_REQUEST_MAX &&
	    find_timestamps(skb, p->l4_off, p->doff) >= 0) {
		__u32 idx = (outbound ? HTTP_REPLY_OUTBOUND : 0) + gen;
		struct http_reply *reply = bpf_map_lookup_elem(&http_reply, &idx);

		if (!reply || !reply->len)
			goto rst;
		/* The response goes out toward the client; the same skb then becomes the RST the server
		 * sees in place of the request (seq = the request's seq exactly, or both sides desync). */
		if (rewrite_to_reply(skb, p, reply))
			goto fail;
		if (bpf_clone_redirect(skb, skb->ifindex, clone_flags))
			goto fail;
		reply_view(&scr->reply, p, reply->len);
		if (rewrite_to_rst(skb, &scr->reply, p->seq, p->ack, true))
			goto fail;
		percpu_inc(&dp_counters, DP_REPLY_SENT);
		return TC_ACT_OK;
	}
rst:;
	/* RST to the client (seq = what it expects next), then the same skb as RST to the server in
	 * place of the request. */
	__u32 c_seq = p->ack, c_ack = p->seq + p->payload_len;

	if (rewrite_to_rst(skb, p, c_seq, c_ack, true))
		goto fail;
	if (bpf_clone_redirect(skb, skb->ifindex, clone_flags))
		goto fail;
	if (rst_back_to_server(skb, p, c_seq, c_ack))
		goto fail;
	percpu_inc(&dp_counters, DP_RST_SENT);
	return TC_ACT_OK;
fail:
	/* a half-rewritten packet must go nowhere */
	percpu_inc(&dp_counters, DP_REPLY_FAILED);
	return TC_ACT_SHOT;
}

/* The resource an HTTP request segment is for, or 0 (not a request line, no route: counted per port). */
static __always_inline __u32 http_route(struct __sk_buff *skb, const struct pkt *p, __u16 port, __u8 key_gen,
					  __u16 key_port)
{
	__u32 zero = 0, n, mlen = 0, plen = 0;
	struct peek *pk = bpf_map_lookup_elem(&peek_scratch, &zero);
	struct http_route_key key = {};
	__u8 method;
	bool ended = false;

	if (!pk)
		return 0;
	n = peek_payload(skb, p, pk);
	if (n < 2)
		return 0;
	if (pk->buf[0] == 0x16 && pk->buf[1] == 0x03) {
		port_count(port, PORT_TLS);
		return 0;
	}
	if (n >= 4 && bytes_eq(pk->buf, "PRI ", 4)) {
		port_count(port, PORT_HTTP2);
		return 0;
	}
	method = n >= 8 ? parse_method(pk->buf, &mlen) : HTTP_METHOD_NONE;
	if (method == HTTP_METHOD_NONE || mlen >= n || pk->buf[mlen & (SE_REQ_PEEK - 1)] != '/') {
		port_count(port, PORT_NOT_REQUEST_LINE);
		return 0;
	}
	for (int i = 0; i < SE_PATH_MAX; i++) {
		__u32 j = mlen + i;
		__u8 c;

		if (j >= n)
			break;
		c = pk->buf[j & (SE_REQ_PEEK - 1)];
		if (c == ' ' || c == '\r' || c == '\n') {
			ended = true;
			break;
		}
		key.path[i] = c;
		plen = i + 1;
	}
	if (!ended && plen < SE_PATH_MAX) {
		/* the request line goes on in a later segment: do not guess from a partial path */
		port_count(port, PORT_NOT_REQUEST_LINE);
		return 0;
	}
	if (skb->gso_segs > 1) {
		port_count(port, PORT_GSO);
		return 0;
	}
	key.prefixlen = 32 + plen * 8;
	key.gen = key_gen;
	key.port = key_port;
	key.method = method;

	__u32 *res = bpf_map_lookup_elem(&http_routes, &key);
	if (!res) {
		port_count(port, PORT_NO_ROUTE);
		return 0;
	}
	return *res;
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	struct pkt *p;
	struct flow_key fk;
	int r;

	percpu_inc(&dp_counters, DP_PACKETS);
	if (!scr)
		return TC_ACT_OK;
	p = &scr->p;
	r = parse_tcp(skb, p);
	if (r != PARSE_OK) {
		if (r == PARSE_MALFORMED)
			percpu_inc(&dp_counters, DP_MALFORMED);
		return TC_ACT_OK;
	}
	__u16 port = bpf_ntohs(p->dport);
	__u8 gen = current_gen();
	if (outbound_http_port(bpf_ntohs(p->sport), gen)) {
		/* a response of a server our outbound HTTP resources call */
		out_response(skb, p);
		return TC_ACT_OK;
	}
	struct port_conf *pc = port_lookup(port, gen);
	if (!pc)
		return TC_ACT_OK;

	if (p->flags & (TCP_RST | TCP_FIN)) {
		/* the client ends the connection: its request (if any) and the connection are done */
		make_key(&fk, p, true, FLOW_KIND_REQUEST);
		complete(&fk, true);
		make_key(&fk, p, true, FLOW_KIND_CONNECTION);
		complete(&fk, false);
		return TC_ACT_OK;
	}
	bool syn = (p->flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	__u32 res = 0;

	if (syn) {
		res = pc->tcp_resource;
		make_key(&fk, p, true, FLOW_KIND_CONNECTION);
		if (res && bpf_map_lookup_elem(&inflight, &fk))
			return TC_ACT_OK; /* a retransmitted SYN was already counted */
	} else if (p->payload_len && pc->has_http) {
		res = http_route(skb, p, port, gen, p->dport);
		make_key(&fk, p, true, FLOW_KIND_REQUEST);
	}
	if (!res || judge(res, gen, &fk, !syn, skb, p) == BLOCK_NONE)
		return TC_ACT_OK;
	return reject(skb, p, syn ? pc->reject_tcp : pc->reject_http, syn, gen, false, scr);
}



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

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct out_route_key);
	__type(value, struct out_route);
} out_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_INFLIGHT_MAX);
	__type(key, __u64);                 /* socket cookie */
	__type(value, struct out_conn);
} out_conns SEC(".maps");

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

/* Egress toward a server of outbound HTTP resources: judge the local caller's request. */
static __always_inline int out_request(struct __sk_buff *skb, const struct pkt *p, __u8 gen,
				       struct ingress_scratch *scr)
{
	struct out_route_key key = { .gen = gen, .family = p->family, .port = p->dport };
	struct out_route *route;
	struct flow_key fk;
	__u32 res;

	__builtin_memcpy(key.addr, p->daddr, SE_ADDR_LEN);
	key.prefixlen = 32 + (p->family == 4 ? 32 : 128);
	route = bpf_map_lookup_elem(&out_routes, &key);
	if (!route || !route->http_service)
		return TC_ACT_OK;
	res = http_route(skb, p, 0, gen | ROUTE_OUTBOUND, (__u16)route->http_service);
	if (!res)
		return TC_ACT_OK;
	make_key(&fk, p, true, FLOW_KIND_OUT_REQUEST);
	if (judge(res, gen, &fk, 1, skb, p) == BLOCK_NONE)
		return TC_ACT_OK;
	return reject(skb, p, REJECT_HTTP_REPLY, false, gen, true, scr);
}

SEC("tc")
int tc_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&egress_scratch, &zero);
	struct flow_key fk;
	struct pkt *p;

	if (!scr)
		return TC_ACT_OK;
	p = &scr->p;
	if (parse_tcp(skb, p) != PARSE_OK)
		return TC_ACT_OK;
	__u8 gen = current_gen();
	if (p->payload_len && !(p->flags & (TCP_RST | TCP_FIN | TCP_SYN)) && outbound_http_port(bpf_ntohs(p->dport), gen))
		return out_request(skb, p, gen, scr);
	__u16 port = bpf_ntohs(p->sport);
	struct port_conf *pc = port_lookup(port, gen);
	if (!pc)
		return TC_ACT_OK;

	if (p->flags & (TCP_RST | TCP_FIN)) {
		make_key(&fk, p, false, FLOW_KIND_REQUEST);
		complete(&fk, true); /* the server closed without answering */
		make_key(&fk, p, false, FLOW_KIND_CONNECTION);
		complete(&fk, false);
		return TC_ACT_OK;
	}
	if (!p->payload_len || !pc->has_http)
		return TC_ACT_OK;

	struct peek *pk = bpf_map_lookup_elem(&peek_scratch, &zero);
	if (!pk || peek_payload(skb, p, pk) < 12 || !bytes_eq(pk->buf, "HTTP/1.", 7))
		return TC_ACT_OK;
	__u8 hundreds = pk->buf[9];
	make_key(&fk, p, false, FLOW_KIND_REQUEST);
	complete(&fk, hundreds == '5');
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

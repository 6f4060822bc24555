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
#include <bpf/bpf_core_read.h>
#include "sentinel.h"
#include "maps.bpf.h"
#include "parse.bpf.h"
#include "stat.bpf.h"
#include "flow.bpf.h"
#include "reject.bpf.h"
#include "xlate.bpf.h"
#include "system.bpf.h"
#include "hotspot.bpf.h"
#include "breaker.bpf.h"
#include "stream.bpf.h"
#include "follow.bpf.h"
#include "normalize.bpf.h"

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);               /* the generation in force, 0 or 1 */
} active_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);             /* one per generation */
	__type(key, __u32);
	__type(value, struct port_slots);
} port_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SE_PORTS_MAX); /* gen * SE_PORTS_MAX + port slot - 1 */
	__type(key, __u32);
	__type(value, struct port_conf);
} inbound_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SE_PORTS_MAX);
	__type(key, __u16);
	__type(value, struct port_counts);
} port_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * SE_HTTP_ROUTES_MAX);   /* two generations during a reload */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct http_route_key);
	__type(value, __u32);               /* resource id; 0 for a search marker that implies no route */
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

/*
 * Requests refused by dropping their segment (`reject.http: {mode: drop}`, or a blocked request in a
 * GRO-merged skb): connection (flow_key, FLOW_KIND_REQUEST) -> the request's place in the client's stream.
 * The client's TCP sends those bytes again; they get the verdict they were given, without being judged
 * (or counted) a second time, also after the client's FIN (its stack still sends them). Gone at the
 * connection's RST, or evicted.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u32);
} refused SEC(".maps");

/*
 * Where each connection's client stream stands in its HTTP framing (see follow.bpf.h): connection
 * (flow_key, FLOW_KIND_REQUEST) -> the state at the start and at the end of the last segment passed. The
 * next segment starts at one of them: at the end when the stack took that segment, at its start when the
 * stack dropped it (out of memory, a bad checksum, a zero window). Gone at the connection's RST, or
 * evicted (then the stream is read as starting a request: `stream_lost`).
 */
struct stream_state {
	struct stream_pos prev;
	struct stream_pos cur;
	struct seq_xlate xl;        /* once a request was refused in the stream (xl_on): its translation */
	__u32 xl_on;
	__u32 requests;             /* requests passed to the server */
	__u32 responses;            /* final responses the server began (a status line starting a segment) */
	__u32 status_seq;           /* the server's seq of the last one counted (its retransmission is not) */
};

/* skb->mark of the replies and resets the programs send (so that egress neither counts nor translates
 * them as the server's). */
#define SE_REPLY_MARK 0x5e0e0429U

/* Set once a request was refused in its connection's stream: from then on the programs look for
 * connections to translate (before, no packet pays the lookup). */
__u32 replied_in_stream = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_STREAMS_MAX);
	__type(key, struct flow_key);
	__type(value, struct stream_state);
} streams SEC(".maps");

/*
 * 1 while out_sockops is attached at the cgroup2 root: a TCP resource's connection then takes its
 * concurrency slot when its handshake completes (a SYN alone takes none, so half-open connections hold
 * nothing); 0: at the SYN. Written by the control plane.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} establish_hook SEC(".maps");

static __always_inline bool establish_hooked(void)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&establish_hook, &zero);

	return on && *on;
}

/* At most this many inflight entries are kept idle (set before load; 0: delete at every response). */
const volatile __s64 inflight_idle_max = SE_INFLIGHT_IDLE_MAX;

/* How many inflight entries are idle (see struct inflight): an approximation that only errs upward. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} inflight_idle SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} dp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);             /* [gen] inbound reject, [HTTP_REPLY_OUTBOUND + gen] outbound 503,
					     * [HTTP_REPLY_KEEPALIVE + gen] inbound reject keeping the connection,
					     * [HTTP_REPLY_OUT_KEEPALIVE + gen] outbound 503 keeping it */
	__type(key, __u32);
	__type(value, struct http_reply);
} http_reply SEC(".maps");

/*
 * Parsed packets live here, not on the 512-byte stack (TC ingress only: egress has its own). On the
 * stack, the verifier tracks every parsed field and the program's states no longer fit its limits.
 */
struct ingress_scratch {
	struct flow_key fk;         /* first: its address is the value's, no arithmetic on a maybe-NULL pointer */
	struct pkt p;
	struct pkt reply;           /* the reply's view, when a request is answered */
	struct stream_pos pre;      /* the client's stream at the segment's first new byte (see follow.bpf.h) */
	struct stream_pos post;     /* ... where following the segment stopped */
	__u32 keep;                 /* payload bytes to pass: the payload's length, or where to cut it */
	__u32 xl_on;                /* the client's segment is to be translated (xl) when it passes;
				     * XL_OUTBOUND: a segment of an outbound HTTP connection (xlate_outbound) */
	struct seq_xlate xl;        /* its connection's sequence translation (see xlate.bpf.h) */
	struct stream_state fresh;  /* a new streams entry, built here (too big for the stack) */
	__u32 again;                /* the segment starts where the last one passed did (stream_prepare) */
	__u8 again_reqs;            /* ... the stream's requests and head hash after that one, */
	__u8 again_started;         /* ... and the requests it started */
	__u64 again_hash;
	__u32 reject_how;           /* refuse_http() -> tc_ingress: reject()'s third argument */
};

#define XL_OUTBOUND 2

__noinline int xlate_outbound(struct __sk_buff *skb, __u32 from_caller);

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

/*
 * The flow key judge() and complete() work on: scratch->fk of ingress (or egress, `egress`). Global
 * functions take it from the map rather than as a pointer argument, which kernels before 6.2 do not
 * accept as a map key ("R2 type=mem expected=fp, pkt, pkt_meta, map_key, map_value").
 */
static __always_inline struct flow_key *scratch_key(bool egress)
{
	__u32 zero = 0;
	struct ingress_scratch *scr =
		bpf_map_lookup_elem(egress ? (void *)&egress_scratch : (void *)&ingress_scratch, &zero);

	return (struct flow_key *)scr; /* fk is the first member */
}

/* Keep contract types in BTF for the generated Python layouts. */
const enum block_type _block_type_unused __attribute__((unused)) = BLOCK_NONE;
const enum reject_mode _reject_mode_unused __attribute__((unused)) = REJECT_HTTP_REPLY;
const enum incomplete_mode _incomplete_mode_unused __attribute__((unused)) = INCOMPLETE_DROP;
const enum http_method _http_method_unused __attribute__((unused)) = HTTP_METHOD_NONE;
const enum flow_behavior _flow_behavior_unused __attribute__((unused)) = FLOW_REJECT;
const enum port_counter _port_counter_unused __attribute__((unused)) = PORT_TLS;
const enum dp_counter _dp_counter_unused __attribute__((unused)) = DP_PACKETS;
const enum flow_kind _flow_kind_unused __attribute__((unused)) = FLOW_KIND_CONNECTION;
const enum inflight_state _inflight_state_unused __attribute__((unused)) = INFLIGHT_IDLE;
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
	if (!(ports->slot[remote] & SE_PORT_OUT_HTTP) && !ports->slot[local])
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
	scan->hash = hash_value(scan, r->param == HOT_HEADER);
	return 1;
}

/* Hotspot rules of the resource: keys of Concurrency rules' values go to `held` (released on completion). */
static __always_inline __u32 check_hotspot(const struct res_conf *rc, __u32 conf_idx, struct __sk_buff *skb,
					   const struct pkt *p, __u64 now_ns, struct hot_key *held)
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
		v = check_hotspot(rc, idx, skb, p, now, held);
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
	now = now_ns();
	now_ms = now / 1000000;
	verdict = in && (gen_flags & JUDGE_SYSTEM_BLOCKED) ? BLOCK_SYSTEM :
		  check_resource(res, gen, st, now, skb, p, entry.hot);
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
		} else if (old->resource == res && !old->hot[0].uid && !old->hot[1].uid && !entry.hot[0].uid &&
			   !entry.hot[1].uid) {
			/* the same resource is still in flight on this tuple: one request ends and one starts,
			 * so the concurrency counts stay */
			old->start_ns = now;
			old->is_http = is_http;
			return BLOCK_NONE;
		} else {
			/* a request without a seen response (pipelining, lost segment): it no longer counts */
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

/*
 * The in-flight request or connection under the scratch's key (see scratch_key) ended (COMPLETE_* flags
 * in `how`). A request's entry
 * stays, idle, for the connection's next request unless the connection ended or too many are idle.
 * A global function: verified once, small frames.
 */
__noinline int complete(__u32 how)
{
	struct flow_key *key = scratch_key(how & COMPLETE_EGRESS);
	struct inflight *f;
	struct res_stats *st, *in;
	__u64 now, rt_ms;
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
	if (__sync_val_compare_and_swap(&f->active, 1, 0) != 1) {
		/* idle already: nothing in flight to complete */
		if (how & (COMPLETE_END | COMPLETE_CLIENT_FIN)) {
			idle_add(-1);
			bpf_map_delete_elem(&inflight, key);
		}
		return 0;
	}
	st = bpf_map_lookup_elem(&res_stats, &f->resource);
	in = f->inbound ? inbound_node() : NULL;
	if ((how & COMPLETE_ABORT) || ((how & COMPLETE_NO_ANSWER) && f->client_closed)) {
		/* the client gave up before the response: not the server's error, breakers never see it */
		if (st) {
			__sync_fetch_and_add(&st->total_abort, 1);
			__sync_fetch_and_add(&st->concurrency, -1);
		}
		if (in)
			__sync_fetch_and_add(&in->concurrency, -1);
		hot_release(f->hot);
		bpf_map_delete_elem(&inflight, key);
		return 0;
	}
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
	if (!(how & COMPLETE_END)) {
		if (idle_add(1) < inflight_idle_max) {
			__builtin_memset(f->hot, 0, sizeof(f->hot));
			return 0;
		}
		idle_add(-1);
	}
	bpf_map_delete_elem(&inflight, key);
	return 0;
}

/* Four or eight bytes of text as the little-endian word a load from a packet gives. */
#define W4(a, b, c, d) ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24)
#define W8(a, b, c, d, e, f, g, h) (W4(a, b, c, d) | W4(e, f, g, h) << 32)
#define LOW_BYTES(n) ((n) >= 8 ? ~0ULL : (1ULL << ((n) * 8)) - 1)

/* A character of a method as nginx reads one (servers differ on others: see docs/inbound.md). */
static __always_inline bool method_char(__u8 c)
{
	return (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
}

/*
 * Method at the start of a request line, from its first 8 bytes as a little-endian word; *len covers the
 * method and its space.
 */
static __always_inline __u8 parse_method(__u64 w, __u32 *len)
{
	__u64 w4 = w & LOW_BYTES(4), w5 = w & LOW_BYTES(5), w6 = w & LOW_BYTES(6), w7 = w & LOW_BYTES(7);

	if (w4 == W4('G', 'E', 'T', ' ')) { *len = 4; return HTTP_GET; }
	if (w5 == W8('P', 'O', 'S', 'T', ' ', 0, 0, 0)) { *len = 5; return HTTP_POST; }
	if (w4 == W4('P', 'U', 'T', ' ')) { *len = 4; return HTTP_PUT; }
	if (w5 == W8('H', 'E', 'A', 'D', ' ', 0, 0, 0)) { *len = 5; return HTTP_HEAD; }
	if (w7 == W8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0)) { *len = 7; return HTTP_DELETE; }
	if (w6 == W8('P', 'A', 'T', 'C', 'H', ' ', 0, 0)) { *len = 6; return HTTP_PATCH; }
	if (w == W8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ')) { *len = 8; return HTTP_OPTIONS; }
	if (w == W8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ')) { *len = 8; return HTTP_CONNECT; }
	if (w6 == W8('T', 'R', 'A', 'C', 'E', ' ', 0, 0)) { *len = 6; return HTTP_TRACE; }
	return HTTP_METHOD_NONE; /* another method (PURGE, PROPFIND): see http_route() */
}

/*
 * A final response's status line at the start of the payload: true for "HTTP/1." (interim 1xx responses
 * other than 101 excluded), with its status class digit in *hundreds.
 */
static __always_inline bool status_line(struct __sk_buff *skb, const struct pkt *p, __u8 *hundreds)
{
	__u8 buf[12];

	if (p->payload_len < sizeof(buf) || bpf_skb_load_bytes(skb, p->payload_off, buf, sizeof(buf)))
		return false;
	if (*(__u32 *)buf != W4('H', 'T', 'T', 'P') || buf[4] != '/' || buf[5] != '1' || buf[6] != '.')
		return false;
	if (buf[9] == '1' && !(buf[10] == '0' && buf[11] == '1'))
		return false; /* interim (100 Continue, 103 Early Hints): the final response follows */
	*hundreds = buf[9];
	return true;
}

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

/*
 * The method of a request line from its first 8 bytes: enum http_method | the length of the method and
 * its space << 8. A global function: the caller gets one unknown value, not one verifier state per method.
 */
__noinline __u32 request_method(__u64 head)
{
	__u32 mlen = 0;
	__u8 method = parse_method(head, &mlen);

	return method | mlen << 8;
}

/*
 * The resource of the longest route for q's method and port that is a prefix of q's path (`plen` bytes
 * long), or 0: a binary search on the route lengths in `lens` (see struct route_lens), one hash lookup
 * per probe. A global function: verified once, whatever path led to it.
 */
__noinline __u32 route_search(const struct http_route_key *q, __u32 plen, const struct route_lens *lens)
{
	struct http_route_key key __attribute__((aligned(8))) = {};
	const __u64 *path;
	__u64 *kw = (__u64 *)key.path;
	__u32 best = 0, lo = 0, hi;

	if (!q || !lens)
		return 0;
	path = (const __u64 *)q->path;
	key.gen = q->gen;
	key.port = q->port;
	key.method = q->method;
	hi = lens->n;
	for (int step = 0; step < SE_ROUTE_PROBES; step++) {
		__u32 mid, rlen;
		__u32 *v;

		if (lo >= hi)
			break;
		mid = (lo + hi) / 2;
		if (mid >= SE_ROUTE_LENS_MAX)
			break;
		rlen = lens->len[mid];
		if (rlen > plen) {
			hi = mid;
			continue;
		}
		key.prefixlen = 32 + rlen * 8;
		for (int i = 0; i < SE_PATH_MAX / 8; i++)
			kw[i] = rlen >= i * 8 + 8 ? path[i] : rlen <= i * 8 ? 0 : path[i] & LOW_BYTES(rlen - i * 8);
		v = bpf_map_lookup_elem(&http_routes, &key);
		if (v) {
			best = *v; /* a route, or a marker's best route so far */
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return best;
}

/* http_route()'s answer when the request line does not end in this segment: do not guess, see it whole. */
#define ROUTE_INCOMPLETE 0xffffffffU
/* CR/LF bytes before a request line (servers skip them) and spaces after the method looked past. */
#define SE_LEAD_MAX 16

/* Up to SE_PATH_MAX bytes at `off` (of `len` left in the segment) into `path`; how many, 0 on error. */
static __always_inline __u32 load_path(struct __sk_buff *skb, __u32 off, __u32 len, __u64 *path)
{
	__u32 n = len < SE_PATH_MAX ? len : SE_PATH_MAX;

	if (n == 0)
		return 0;
	n = ((n - 1) & (SE_PATH_MAX - 1)) + 1; /* same value; a range [1, SE_PATH_MAX] the verifier can see */
	return bpf_skb_load_bytes(skb, off, path, n) ? 0 : n;
}

/* leading()'s `a` for "characters of a method" (method_char). */
#define LEAD_METHOD_CHARS 0x100

/*
 * How many bytes at `off` (of `len` left) are `a` or `b` (or method characters), at most SE_LEAD_MAX.
 * A global function: the caller gets one unknown count, not one verifier state per possible count.
 */
__noinline __u32 leading(struct __sk_buff *skb, __u32 off, __u32 len, __u32 a, __u32 b)
{
	__u8 buf[SE_LEAD_MAX] = {};
	__u32 i, n = len < SE_LEAD_MAX ? len : SE_LEAD_MAX;

	if (!skb || n == 0)
		return 0;
	n = ((n - 1) & (SE_LEAD_MAX - 1)) + 1;
	if (bpf_skb_load_bytes(skb, off, buf, n))
		return 0;
	for (i = 0; i < SE_LEAD_MAX; i++) {
		if (i >= n)
			break;
		if (a == LEAD_METHOD_CHARS ? !method_char(buf[i]) : buf[i] != a && buf[i] != b)
			break;
	}
	return i;
}

/*
 * Where the path of an absolute-form target starts ("http://host/path": the offset of "/path" from `off`),
 * ABS_ROOT when the target has no path (then it is "/"), or ABS_UNKNOWN when the authority does not end
 * within what is read. `start`: the scheme's length (7 or 8). A global function, like leading().
 */
#define ABS_ROOT 0xfffffffeU
#define ABS_UNKNOWN 0xffffffffU
__noinline __u32 absolute_path_at(struct __sk_buff *skb, __u32 off, __u32 len, __u32 start)
{
	__u64 path[SE_PATH_MAX / 8] = {};
	__u32 n = load_path(skb, off, len, path);

	if (!n || start > 8)
		return ABS_UNKNOWN;
	for (int i = 0; i < SE_PATH_MAX / 8; i++) {
		__u64 w = path[i], slash, end;
		__u32 base = i * 8, at;

		if (base >= n)
			break;
		if (base + 8 <= start)
			continue; /* the scheme */
		if (base < start) /* the scheme's bytes in this word read as 'A's, which end nothing */
			w = (w & ~LOW_BYTES(start - base)) | (0x4141414141414141ULL & LOW_BYTES(start - base));
		slash = bytes_equal_to(w, '/');
		end = bytes_equal_to(w, ' ') | bytes_equal_to(w, '\r') | bytes_equal_to(w, '?');
		if (!(slash | end))
			continue;
		at = base + lowest_flagged_byte(slash | end);
		if (at >= n)
			break;
		return slash && lowest_flagged_byte(slash) == lowest_flagged_byte(slash | end) ? at : ABS_ROOT;
	}
	return ABS_UNKNOWN;
}

/* Lower-case ASCII letters of a little-endian word of text (other bytes may change: compare letters only). */
#define LOWER_WORD(w) ((w) | 0x2020202020202020ULL)

/*
 * The resource an HTTP request is for, 0 (not a request line, no route: counted per port) or
 * ROUTE_INCOMPLETE. The request line starts `skip` bytes into the payload (port_skip = skip << 16 |
 * port, the port in host order for the counters), after any empty lines; the method is read as one word;
 * spaces after it are skipped; an absolute-form target (http://host/path) is reduced to its path; the path
 * goes straight into the route key; the longest route that is a prefix of it is found by binary search on
 * the route lengths in `lens` (see struct route_lens). HEAD falls back to GET when no route names HEAD.
 * The key's gen and port fields come as gen << 16 | port. A global function: the verifier checks it once.
 */
__noinline __u32 http_route(struct __sk_buff *skb, const struct pkt *p, __u32 port_skip, __u32 key_gen_port,
			    const struct route_lens *lens)
{
	struct http_route_key q __attribute__((aligned(8))) = {};
	struct path_words pw = {};
	__u64 *path = pw.w, head = 0;
	__u32 port = port_skip & 0xffff, skip = port_skip >> 16;
	__u32 n, off, len, lead, mlen, plen = SE_PATH_MAX, best;
	__u8 method;

	if (!skb || !p || !lens || skip >= p->payload_len)
		return 0;
	off = p->payload_off + skip;
	len = p->payload_len - skip;
	/* empty lines before the request line */
	lead = leading(skb, off, len, '\r', '\n');
	if (lead == len)
		return 0; /* only line ends: the request starts in a later segment, at its first byte */
	if (lead >= SE_LEAD_MAX)
		goto incomplete;
	off += lead;
	len -= lead;
	if (len < 8)
		goto short_line;
	if (bpf_skb_load_bytes(skb, off, &head, 8))
		return 0;
	if (!lead && (head & 0xffff) == 0x0316) {
		port_count(port, PORT_TLS);
		return 0;
	}
	if (!lead && (head & LOW_BYTES(4)) == W4('P', 'R', 'I', ' ')) {
		port_count(port, PORT_HTTP2);
		return 0;
	}
	mlen = request_method(head);
	method = mlen & 0xff;
	mlen = (mlen >> 8) & 0xf;
	if (method == HTTP_METHOD_NONE) {
		/* another method of 1 to 15 characters (PURGE, PROPFIND, VERSION-CONTROL) and its space */
		__u32 run = leading(skb, off, len, LEAD_METHOD_CHARS, 0);
		__u8 sp = 0;

		if (run == 0 || run >= SE_LEAD_MAX)
			goto not_request_line;
		if (run >= len)
			goto incomplete; /* the method goes on in a later segment */
		if (bpf_skb_load_bytes(skb, off + run, &sp, 1) || sp != ' ')
			goto not_request_line;
		method = HTTP_OTHER;
		mlen = run + 1;
	}
	if (!mlen || mlen > SE_LEAD_MAX)
		goto not_request_line;
	off += mlen;
	len -= mlen;
	/* more spaces after the method's one */
	lead = leading(skb, off, len, ' ', ' ');
	if (lead >= SE_LEAD_MAX || lead >= len)
		goto incomplete;
	off += lead;
	len -= lead;
	n = load_path(skb, off, len, path);
	if (!n)
		goto incomplete;
	if ((path[0] & 0xff) != '/') {
		/* absolute-form: http://authority/path, or http://authority alone (the path is "/") */
		__u32 start, at;

		if ((LOWER_WORD(path[0]) & LOW_BYTES(7)) == W8('h', 't', 't', 'p', ':', '/', '/', 0) &&
		    ((path[0] >> 32) & 0xff) == ':')
			start = 7;
		else if (LOWER_WORD(path[0]) == W8('h', 't', 't', 'p', 's', ':', '/', '/') &&
			 ((path[0] >> 40) & 0xff) == ':')
			start = 8;
		else
			goto not_request_line;
		at = absolute_path_at(skb, off, len, start);
		if (at == ABS_UNKNOWN)
			goto incomplete; /* the authority goes on past what is read: do not guess */
		if (at == ABS_ROOT) {
			__builtin_memset(&pw, 0, sizeof(pw));
			path[0] = W4('/', ' ', 0, 0); /* no path: the target is the server's root */
			n = 2;
			goto have_path;
		}
		if (at >= len)
			goto incomplete;
		off += at;
		len -= at;
		n = load_path(skb, off, len, path);
		if (!n)
			goto incomplete;
		goto have_path;
	}
have_path:
	for (int i = 0; i < SE_PATH_MAX / 8; i++) {
		__u64 end = bytes_equal_to(path[i], ' ') | bytes_equal_to(path[i], '\r') |
			    bytes_equal_to(path[i], '\n');

		if (end) {
			plen = i * 8 + lowest_flagged_byte(end);
			break;
		}
	}
	if (plen >= n && n < SE_PATH_MAX)
		goto incomplete; /* the request line goes on in a later segment */
	if (needs_normalizing(path, plen)) {
		n = normalize_target(skb, off, len, &pw);
		if (n)
			plen = n;
	}
	if (skb->gso_segs > 1)
		port_count(port, PORT_GSO); /* judged all the same; see tc_ingress */
	q.gen = key_gen_port >> 16;
	q.port = key_gen_port;
	q.method = method;
	__builtin_memcpy(q.path, pw.w, sizeof(q.path));
	best = route_search(&q, plen, lens);
	if (!best && method == HTTP_HEAD) {
		q.method = HTTP_GET; /* HEAD is a GET without the body, unless a resource names HEAD */
		best = route_search(&q, plen, lens);
	}
	if (!best)
		port_count(port, PORT_NO_ROUTE);
	return best;
short_line:
	/* fewer than 8 bytes: a request line's beginning ("GET /"), or something else */
	if (bpf_skb_load_bytes(skb, off, &head, 1) || (head & 0xff) < 'A' || (head & 0xff) > 'Z')
		goto not_request_line;
incomplete:
	port_count(port, PORT_INCOMPLETE);
	return ROUTE_INCOMPLETE;
not_request_line:
	port_count(port, PORT_NOT_REQUEST_LINE);
	return 0;
}

/* http_segment()'s answers besides a resource id (or 0: pass unjudged). */
#define SEGMENT_DROP 0xfffffffeU    /* drop it: the client sends it again */
#define SEGMENT_RESET 0xfffffffdU   /* reset the connection */
#define SEGMENT_ANSWER_AGAIN 0xfffffffcU /* the request last refused in the stream: send its reply again */
#define SEGMENT_SWALLOW 0xfffffffbU /* the rest of a refused request: acknowledge it, or answer where it ends */

/*
 * The stream's state at client sequence number `at` into scratch pre and post (the key in scratch fk):
 * the state after the last segment passed, or before it (scratch again) when that segment comes again
 * before the stack took it (a duplicate queued behind it while the application held the socket; the
 * stack dropped it), or a request's start when neither (a new connection: 0; a lost state: 1). A global
 * function.
 */
__noinline int stream_prepare(__u32 at)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	struct stream_state *ss;
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
	} else {
		lost = ss != NULL;
	}
	scr->pre.seq = at;
	scr->pre.valid = 1;
	scr->post = scr->pre;
	return lost;
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
	return TC_ACT_OK;
}

/*
 * A client's data segment on a port with HTTP resources: where it stands in the stream (segment_position)
 * decides whether it is looked at; where it stands in the stream's HTTP framing (follow.bpf.h) decides
 * whether a request starts at its first new byte (its request line is then looked up) and where to cut it
 * (scratch keep; stream_pass cuts). A request line that does not end in the segment is dropped at
 * rcv_nxt, so that the client sends it again, merged with what follows (Linux merges small unacknowledged
 * segments when it retransmits), up to SE_INCOMPLETE_TRIES times; then the connection is reset.
 * `reject.incomplete: pass` lets it through instead. *skip: bytes of the segment received before (judged from there on).
 */
static __always_inline __u32 http_segment(struct __sk_buff *skb, const struct pkt *p, const struct port_conf *pc,
					  __u8 gen, __u32 *skip, struct ingress_scratch *scr)
{
	__u16 port = bpf_ntohs(p->dport);
	__u32 res, follow;

	scr->pre.valid = 0;
	switch (segment_position(skb, p, skip, scr->xl_on ? &scr->xl : NULL)) {
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
	if (stream_prepare(p->seq + ((p->flags & TCP_SYN) ? 1 : 0) + *skip))
		port_count(port, PORT_STREAM_LOST);
	follow = stream_follow(skb, p, *skip, &scr->post);
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
	if (scr->again && scr->again_started && scr->post.reqs == scr->again_reqs &&
	    scr->post.hash == scr->again_hash) {
		/* the request judged (and passed) when the segment came first: its verdict stands */
		port_count(port, PORT_RETRANSMIT);
		return 0;
	}
	res = http_route(skb, p, *skip << 16 | port, (__u32)gen << 16 | pc->slot, &pc->lens);
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

static __always_inline int ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ingress_scratch *scr;
	struct port_slots *ports;
	struct port_conf *pc;
	struct flow_key *fk;
	__u16 slot;
	struct pkt *p;
	__u8 gen;
	int r;

	percpu_inc(&dp_counters, DP_PACKETS);
	ports = ports_concerned(skb, &gen, true);
	if (!ports)
		return TC_ACT_OK;
	scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	if (!scr)
		return TC_ACT_OK;
	p = &scr->p;
	fk = &scr->fk;
	r = parse_tcp(skb, p);
	if (r != PARSE_OK) {
		if (r == PARSE_MALFORMED)
			percpu_inc(&dp_counters, DP_MALFORMED);
		else if (r == PARSE_FRAGMENT && p->dport && ports->slot[p->dport])
			port_count(bpf_ntohs(p->dport), PORT_FRAGMENT);
		else if (r == PARSE_FRAGMENT || r == PARSE_UNPARSED)
			percpu_inc(&dp_counters, DP_UNPARSED);
		return TC_ACT_OK;
	}
	if ((ports->slot[p->sport] & SE_PORT_OUT_HTTP) && !(ports->slot[p->dport] & ~SE_PORT_OUT_HTTP)) {
		/* a response of a server our outbound HTTP resources call (to a local port nothing protects:
		 * a client whose source port is such a server's port is still judged) */
		out_response(skb, p, fk);
		scr->xl_on = XL_OUTBOUND; /* xlate_outbound looks for its translation */
		return TC_ACT_OK;
	}
	slot = ports->slot[p->dport];
	if (!slot)
		return TC_ACT_OK;
	pc = port_lookup(slot, gen);
	if (pc && (pc->next | pc->scope_family | pc->scope_cgroup_level))
		pc = port_lookup(port_scope(skb, p, (__u32)gen << 16 | slot, 1), gen); /* a port with scopes */
	if (!pc)
		return TC_ACT_OK; /* no scope of the port holds the connection */
	if (replied_in_stream) {
		make_key(fk, p, true, FLOW_KIND_REQUEST);
		xl_load((p->flags & (TCP_SYN | TCP_ACK)) == TCP_SYN);
	}

	if (pc->defer_accept && !p->payload_len && (p->flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK)) == TCP_ACK &&
	    handshake_pending(skb, p)) {
		/* deferred accept: the server's stack makes the connection when the first request comes
		 * (and is judged); a refused first request then costs the server no accept, no reset to read */
		port_count(bpf_ntohs(p->dport), PORT_DEFERRED_ACK);
		return TC_ACT_SHOT;
	}
	bool http_data = p->payload_len && pc->has_http && !(p->flags & TCP_RST);
	bool syn = (p->flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	__u32 res, skip = 0, how, at, *refused_at;

	if ((p->flags & TCP_RST) || ((p->flags & TCP_FIN) && !http_data)) {
		/* the client ends the connection: a reset abandons its request (an abort); after a FIN the
		 * server may still answer it. The connection is done. (A FIN carrying a request only
		 * half-closes: the request is judged below, and the response completes it.) */
		make_key(fk, p, true, FLOW_KIND_REQUEST);
		if (p->flags & TCP_RST) {
			/* (not at a FIN: a client that closes still sends the refused bytes again) */
			bpf_map_delete_elem(&refused, fk);
			bpf_map_delete_elem(&streams, fk);
		}
		complete(p->flags & TCP_RST ? COMPLETE_ABORT | COMPLETE_END : COMPLETE_CLIENT_FIN);
		make_key(fk, p, true, FLOW_KIND_CONNECTION);
		complete(COMPLETE_END);
		return TC_ACT_OK;
	}
	if (syn) {
		res = pc->tcp_resource;
		make_key(fk, p, true, FLOW_KIND_CONNECTION);
		if (res && bpf_map_lookup_elem(&inflight, fk))
			return TC_ACT_OK; /* a retransmitted SYN was already counted */
		if (res && !pc->scope_family && !syn_for_this_host(skb, p)) {
			/* routed or bridged elsewhere (an address a scope names counts as this host's: a
			 * gateway may govern connections to the servers behind it) */
			port_count(bpf_ntohs(p->dport), PORT_NO_SOCKET);
			return TC_ACT_OK;
		}
		if (res && judge(res, gen | system_flag(gen), skb, p) != BLOCK_NONE)
			return reject(skb, p, pc->reject_tcp | REJECT_SYN | (gen ? REJECT_GEN1 : 0));
		/* a SYN with data (TCP Fast Open) carries a request: judged like any other */
	}
	if (!http_data)
		return TC_ACT_OK;
	make_key(fk, p, true, FLOW_KIND_REQUEST);
	res = http_segment(skb, p, pc, gen, &skip, scr);
	if (res == SEGMENT_DROP)
		return TC_ACT_SHOT;
	how = (syn ? REJECT_SYN : 0) | (gen ? REJECT_GEN1 : 0);
	if (res == SEGMENT_RESET)
		return reject(skb, p, REJECT_RST | how);
	if (res == SEGMENT_ANSWER_AGAIN) {
		r = reply_in_stream(skb, p, (gen ? 2 : 0) | 1);
		return r < 0 ? TC_ACT_SHOT : r;
	}
	if (res == SEGMENT_SWALLOW) {
		/* the rest of a refused request: acknowledged, or answered where it ends; else the closing
		 * reply (or a reset: the server owes, or the segment begins with bytes received before) */
		r = reply_in_stream(skb, p, (gen ? 2 : 0) | 4);
		if (r >= 0)
			return r;
		return reject(skb, p, (r == -2 || skip ? REJECT_RST | skip << 16 : pc->reject_http & 0xff) | how);
	}
	if (!res)
		return stream_pass(skb, p);
	at = p->seq + syn + skip; /* where the request starts in the client's stream */
	refused_at = bpf_map_lookup_elem(&refused, fk);
	if (refused_at && *refused_at == at)
		port_count(bpf_ntohs(p->dport), PORT_REFUSED_AGAIN); /* dropped before: the same verdict */
	else if (judge(res, gen | JUDGE_HTTP | system_flag(gen), skb, p) == BLOCK_NONE)
		return stream_pass(skb, p);
	r = refuse_http(skb, p, pc->reject_http | how, skip, at);
	return r == REFUSE_BY_REJECT ? reject(skb, p, scr->reject_how) : r;
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	int r;

	xl_clear(false);
	r = ingress(skb);
	if (r != TC_ACT_OK || !replied_in_stream)
		return r;
	return xl_state(false) == XL_OUTBOUND ? xlate_outbound(skb, 0) : xlate_to_server(skb);
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
		if (stream_follow(skb, p, 0, &scr->post) != p->payload_len || scr->post.phase != STREAM_REQUEST ||
		    scr->post.reqs != 1 || scr->post.carry_len || (scr->post.last & LAST_CLOSE))
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
	if (!res)
		return TC_ACT_OK;
	make_key(fk, p, true, FLOW_KIND_OUT_REQUEST);
	if (judge(res, gen | JUDGE_HTTP | JUDGE_EGRESS, skb, p) == BLOCK_NONE)
		return TC_ACT_OK;
	r = out_reply_in_stream(skb, p, gen ? 2 : 0);
	if (r >= 0)
		return r;
	percpu_inc(&dp_counters, DP_REPLY_CLOSED);
	return reject(skb, p, REJECT_HTTP_REPLY | REJECT_OUTBOUND | (gen ? REJECT_GEN1 : 0));
}

/*
 * A server segment on a protected port, of a connection that had a request refused in its stream: into
 * the client's numbering. Not the programs' own replies and resets (already in it). A global function.
 */
__noinline int xlate_to_client(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&egress_scratch, &zero);
	struct stream_state *e;

	if (!skb || !scr || !scr->xl_on || skb->mark == SE_REPLY_MARK)
		return TC_ACT_OK;
	make_key(&scr->fk, &scr->p, false, FLOW_KIND_REQUEST);
	e = bpf_map_lookup_elem(&streams, &scr->fk);
	if (!e || !e->xl_on)
		return TC_ACT_OK;
	if (xlate_segment(skb, &scr->p, &e->xl, 0)) {
		percpu_inc(&dp_counters, DP_REPLY_FAILED);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* The server began a final response (a status line starts its segment; scratch fk is the request key). */
static __always_inline void count_response(struct __sk_buff *skb, const struct pkt *p, const struct flow_key *fk)
{
	struct stream_state *e;

	if (skb->mark == SE_REPLY_MARK)
		return;
	e = bpf_map_lookup_elem(&streams, fk);
	if (e && e->status_seq != p->seq) {
		e->status_seq = p->seq; /* (a retransmission of it is not another response) */
		__sync_fetch_and_add(&e->responses, 1);
	}
}

static __always_inline int egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ingress_scratch *scr;
	struct port_slots *ports;
	struct port_conf *pc;
	struct flow_key *fk;
	__u16 slot;
	struct pkt *p;
	__u8 gen, hundreds;

	ports = ports_concerned(skb, &gen, false);
	if (!ports)
		return TC_ACT_OK;
	scr = bpf_map_lookup_elem(&egress_scratch, &zero);
	if (!scr)
		return TC_ACT_OK;
	p = &scr->p;
	fk = &scr->fk;
	if (parse_tcp(skb, p) != PARSE_OK)
		return TC_ACT_OK;
	if ((ports->slot[p->dport] & SE_PORT_OUT_HTTP) && !(ports->slot[p->sport] & ~SE_PORT_OUT_HTTP)) {
		scr->xl_on = XL_OUTBOUND; /* a caller's segment: xlate_outbound looks for its translation */
		if (p->payload_len && !(p->flags & (TCP_RST | TCP_FIN | TCP_SYN)))
			return out_request(skb, p, gen, fk);
		return TC_ACT_OK;
	}
	slot = ports->slot[p->sport];
	if (!slot)
		return TC_ACT_OK;
	pc = port_lookup(slot, gen);
	if (pc && (pc->next | pc->scope_family | pc->scope_cgroup_level))
		pc = port_lookup(port_scope(skb, p, (__u32)gen << 16 | slot, 0), gen); /* a port with scopes */
	if (!pc)
		return TC_ACT_OK;
	scr->xl_on = pc->has_http; /* a server segment: xlate_to_client looks for its translation */

	if (p->flags & (TCP_RST | TCP_FIN)) {
		make_key(fk, p, false, FLOW_KIND_REQUEST);
		complete(COMPLETE_EGRESS | COMPLETE_ERROR | COMPLETE_END | COMPLETE_NO_ANSWER);
		make_key(fk, p, false, FLOW_KIND_CONNECTION);
		complete(COMPLETE_EGRESS | COMPLETE_END);
		return TC_ACT_OK;
	}
	if (!p->payload_len || !pc->has_http || !status_line(skb, p, &hundreds))
		return TC_ACT_OK;
	make_key(fk, p, false, FLOW_KIND_REQUEST);
	count_response(skb, p, fk);
	complete(COMPLETE_EGRESS | (hundreds == '5' ? COMPLETE_ERROR : 0));
	return TC_ACT_OK;
}

SEC("tc")
int tc_egress(struct __sk_buff *skb)
{
	int r;

	xl_clear(true);
	r = egress(skb);
	if (r != TC_ACT_OK || !replied_in_stream)
		return r;
	return xl_state(true) == XL_OUTBOUND ? xlate_outbound(skb, 1) : xlate_to_client(skb);
}

/*
 * Reconciliation, run by the control plane through BPF_PROG_TEST_RUN (never attached). An in-flight entry
 * whose connection is gone (a half-open connection that timed out or was never kept, a FIN or RST this
 * host never saw) would hold its slot for good: RECONCILE_RELEASE gives it back when the server's
 * listener is found but no socket of the connection. When not even a listener is found the answer is
 * unknown (another network namespace, the server stopped): the entry is kept. RECONCILE_ADJUST corrects
 * a count that drifted from the in-flight entries (an entry evicted from the LRU, say).
 */
#define TCP_LISTEN_STATE 10

const enum reconcile_op _reconcile_op_unused __attribute__((unused)) = RECONCILE_RELEASE;
const struct reconcile_req _reconcile_req_unused __attribute__((unused)) = {};

static __always_inline int connection_gone(struct __sk_buff *skb, const struct flow_key *k)
{
	struct bpf_sock *sk = lookup_tuple(skb, k->family, k->saddr, k->daddr, k->sport, k->dport);
	int gone;

	if (!sk)
		return 0; /* no listener either: nothing known */
	gone = sk->state == TCP_LISTEN_STATE;
	bpf_sk_release(sk);
	return gone;
}

SEC("tc")
int reconcile(struct __sk_buff *skb)
{
	struct reconcile_req req;
	struct res_stats *st, *in;
	struct inflight *f;

	if (bpf_skb_load_bytes(skb, 0, &req, sizeof(req)))
		return -1;
	if (req.op == RECONCILE_ADJUST) {
		st = req.resource ? bpf_map_lookup_elem(&res_stats, &req.resource) : inbound_node();
		if (!st)
			return -1;
		__sync_fetch_and_add(&st->concurrency, req.delta);
		percpu_inc(&dp_counters, DP_CONCURRENCY_REPAIRED);
		return 0;
	}
	if (req.key.kind == FLOW_KIND_OUT_REQUEST)
		return 0; /* a local client's socket: no listener tells that it is gone */
	f = bpf_map_lookup_elem(&inflight, &req.key);
	if (!f || now_ns() - f->start_ns < req.grace_ns || !connection_gone(skb, &req.key))
		return 0;
	if (f->active == INFLIGHT_PENDING) {
		bpf_map_delete_elem(&inflight, &req.key); /* half-open and gone: it never took a slot */
		return 1;
	}
	if (__sync_val_compare_and_swap(&f->active, 1, 0) != 1) {
		idle_add(-1); /* an idle keep-alive entry whose close was never seen */
		bpf_map_delete_elem(&inflight, &req.key);
		return 0;
	}
	st = bpf_map_lookup_elem(&res_stats, &f->resource);
	in = f->inbound ? inbound_node() : NULL;
	if (st)
		__sync_fetch_and_add(&st->concurrency, -1);
	if (in)
		__sync_fetch_and_add(&in->concurrency, -1);
	hot_release(f->hot);
	bpf_map_delete_elem(&inflight, &req.key);
	percpu_inc(&dp_counters, DP_CONCURRENCY_REPAIRED);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

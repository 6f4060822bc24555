// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Inbound governance at TC: ingress counts and judges new connections (SYN) to TCP resources and HTTP
 * requests (request line at the start of a segment) to HTTP resources; egress sees the responses'
 * status lines to complete requests (RT, 5xx errors, concurrency). Rules and resources arrive in maps
 * written by the control plane; everything that cannot be classified passes and is counted.
 *
 * One BPF object. Its maps, and the types their values hold, are in dataplane.bpf.h; this file holds the
 * TC entry points (ingress, egress) and what they share; the rest by concern:
 *   judge.bpf.h      generation, ports and scopes, flow keys, Sentinel's checks, judge() and complete()
 *   route.bpf.h      request and status lines, http_route() (target, normalising, longest prefix)
 *   refuse.bpf.h     the closing answer (reject()), an outbound response's completion
 *   segment.bpf.h    a client's segment in its stream: where requests start, cutting, passing
 *   keepalive.bpf.h  a refusal answered in the connection's stream, translation, refuse_http()
 *   outbound.bpf.h   connect() and sock_ops programs, outbound HTTP requests at egress
 *   reconcile.bpf.h  the reconciliation program (BPF_PROG_TEST_RUN from the control plane)
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "sentinel.h"
#include "maps.bpf.h"
#include "parse.bpf.h"
#include "dataplane.bpf.h"
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

/* skb->mark of the replies and resets the programs send (so that egress neither counts nor translates
 * them as the server's). */
#define SE_REPLY_MARK 0x5e0e0429U

/* Set once a request was refused in its connection's stream: from then on the programs look for
 * connections to translate (before, no packet pays the lookup). */
__u32 replied_in_stream = 0;

static __always_inline bool establish_hooked(void)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&establish_hook, &zero);

	return on && *on;
}

/* At most this many inflight entries are kept idle (set before load; 0: delete at every response). */
const volatile __s64 inflight_idle_max = SE_INFLIGHT_IDLE_MAX;

#define XL_OUTBOUND 2

__noinline int xlate_outbound(struct __sk_buff *skb, __u32 from_caller);

/*
 * parse_tcp into the scratch's p, of ingress (0) or egress (1). A global function (verified once; it may
 * pull headers into the linear data), which its callers call holding nothing but the skb.
 */
__noinline int parse_into(struct __sk_buff *skb, __u32 egress)
{
	__u32 zero = 0;
	struct ingress_scratch *scr;

	if (egress)
		scr = bpf_map_lookup_elem(&egress_scratch, &zero);
	else
		scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	if (!skb || !scr)
		return PARSE_NOT_TCP;
	scr->req_off = 0;
	return parse_tcp(skb, &scr->p);
}

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

/* (each needs the maps and scratch above: not included on its own) */
#include "judge.bpf.h"
#include "route.bpf.h"
#include "refuse.bpf.h"
#include "segment.bpf.h"
#include "keepalive.bpf.h"
#include "outbound.bpf.h"
#include "reconcile.bpf.h"

/*
 * A client packet parse_tcp could not read to its TCP payload (r): counted. A first IP fragment to a
 * protected port, and an IPv6 packet whose extension headers go on past the bound (the stack walks any
 * number of them), carry what nothing here can judge: a client could split its SYN or request so on
 * purpose, to pass unjudged. Both are dropped (without its first fragment the stack cannot rebuild the
 * segment; later fragments, alone, pass), unless the rules let what the kernel cannot read whole pass
 * (reject.incomplete: pass, the same for every port: slot 1, when the generation has a port, says).
 */
static __always_inline int unreadable(int r, const struct pkt *p, struct port_slots *ports, __u8 gen)
{
	struct port_conf *pc;

	if (r == PARSE_MALFORMED) {
		percpu_inc(&dp_counters, DP_MALFORMED);
		return TC_ACT_OK;
	}
	if (r == PARSE_FRAGMENT && p->dport) {
		pc = port_lookup(ports->slot[p->dport], gen);
		if (pc) {
			port_count(bpf_ntohs(p->dport), PORT_FRAGMENT);
			return pc->incomplete == INCOMPLETE_PASS ? TC_ACT_OK : TC_ACT_SHOT;
		}
	}
	if (r == PARSE_V6_CHAIN) {
		pc = port_lookup(1, gen);
		if (pc && (pc->has_http || pc->tcp_resource) && pc->incomplete != INCOMPLETE_PASS) {
			percpu_inc(&dp_counters, DP_CHAIN_DROPPED);
			return TC_ACT_SHOT;
		}
	}
	if (r == PARSE_FRAGMENT || r == PARSE_UNPARSED || r == PARSE_V6_CHAIN)
		percpu_inc(&dp_counters, DP_UNPARSED);
	return TC_ACT_OK;
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
	r = parse_into(skb, 0);
	scr = bpf_map_lookup_elem(&ingress_scratch, &zero);
	if (!scr)
		return TC_ACT_OK;
	p = &scr->p;
	fk = &scr->fk;
	if (r != PARSE_OK)
		return unreadable(r, p, ports, gen);
	slot = ports->slot[p->dport]; /* (the local port first: a server's port decides without the other's) */
	if (!(slot & ~SE_PORT_OUT_HTTP) && (ports->slot[p->sport] & SE_PORT_OUT_HTTP)) {
		/* a response of a server our outbound HTTP resources call (to a local port nothing protects:
		 * a client whose source port is such a server's port is still judged) */
		out_response(skb, p, fk);
		scr->xl_on = XL_OUTBOUND; /* xlate_outbound looks for its translation */
		return TC_ACT_OK;
	}
	if (!slot)
		return TC_ACT_OK;
	pc = port_lookup(slot, gen);
	if (pc && (pc->next | pc->scope_family | pc->scope_cgroup_level))
		pc = port_lookup(port_scope(skb, p, (__u32)gen << 16 | slot, 1), gen); /* a port with scopes */
	if (!pc)
		return TC_ACT_OK; /* no scope of the port holds the connection */
	if ((p->flags & TCP_URG) && pc->has_http) {
		port_count(bpf_ntohs(p->dport), PORT_URGENT);
		if (clear_urgent(skb, p)) {
			percpu_inc(&dp_counters, DP_CUT_FAILED);
			return TC_ACT_SHOT; /* (the client sends it again) */
		}
		p->flags &= ~TCP_URG;
	}
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
	if (res) {
		at = p->seq + syn + skip; /* where the request starts in the client's stream */
		refused_at = bpf_map_lookup_elem(&refused, fk);
		if (refused_at && *refused_at == at) {
			port_count(bpf_ntohs(p->dport), PORT_REFUSED_AGAIN); /* dropped before: the same verdict */
			res = BLOCK_FLOW;
		} else {
			res = judge(res, gen | JUDGE_HTTP | system_flag(gen), skb, p);
			if (res == JUDGE_QUEUE_FULL) {
				pipelined_verdict(res); /* counted; dropped: it comes again */
				return TC_ACT_SHOT;
			}
		}
		if (res != BLOCK_NONE) {
			r = refuse_http(skb, p, pc->reject_http | how, skip, at);
			return r == REFUSE_BY_REJECT ? reject(skb, p, scr->reject_how) : r;
		}
	}
	/* the segment passes: the requests that start inside it judged (segment.bpf.h), then cut there */
	scr->pipe_key = (__u32)gen << 16 | pc->slot;
	scr->reject_how = REJECT_RST | how;
	for (int i = 0; i < SE_PIPELINED_MAX; i++) {
		res = pipelined_start();
		if (res == PIPELINED_CUT)
			break;
		res = http_route(skb, p, res << 16 | bpf_ntohs(p->dport), scr->pipe_key, &pc->lens);
		res = pipelined_follow(skb, res, pc->incomplete);
		if (res == PIPELINED_CUT || res == SEGMENT_RESET ||
		    pipelined_verdict(res ? judge(res, scr->pipe_flags, skb, p) : BLOCK_NONE))
			break;
	}
	if (res == SEGMENT_RESET)
		return reject(skb, p, scr->reject_how);
	return stream_pass(skb, p);
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

/*
 * The final responses that begin in the server's segment after the one at its start (egress scratch p),
 * each where the one before ends: its head and body followed as a request's are (Content-Length, chunked;
 * a response with neither and a keep-alive connection is a bodiless one, as 204 and 304 are), up to
 * SE_PIPELINED_MAX of them; counting stops at the first place that does not start a status line (a
 * response that goes on past the segment, a HEAD request's, whose Content-Length has no body). A global
 * function.
 */
__noinline __u32 more_responses(struct __sk_buff *skb)
{
	__u32 zero = 0, off = 0, n = 0;
	struct ingress_scratch *scr = bpf_map_lookup_elem(&egress_scratch, &zero);
	__u8 c;

	if (!skb || !scr)
		return 0;
	__builtin_memset(&scr->post, 0, sizeof(scr->post));
	for (int i = 0; i < SE_PIPELINED_MAX; i++) {
		off = stream_follow(skb, &scr->p, off, &scr->post, FOLLOW_HOW(0, scr->p.payload_len));
		if (off >= scr->p.payload_len || scr->post.phase != STREAM_REQUEST)
			break;
		c = status_at(skb, &scr->p, off);
		if (!c)
			break;
		if (c != STATUS_INTERIM) /* (an interim response: its final one follows) */
			n++;
	}
	return n;
}

/*
 * The server began a final response (a status line starts its segment; scratch fk is the request key):
 * counted, and those after it in the segment when the connection has more than one request to answer.
 */
static __always_inline void count_response(struct __sk_buff *skb, const struct pkt *p, const struct flow_key *fk)
{
	struct stream_state *e;
	__u32 n = 1;

	if (skb->mark == SE_REPLY_MARK)
		return;
	e = bpf_map_lookup_elem(&streams, fk);
	if (e && e->status_seq != p->seq) {
		e->status_seq = p->seq; /* (a retransmission of it is not another response) */
		if (e->requests - e->responses > 1)
			n += more_responses(skb);
		__sync_fetch_and_add(&e->responses, n);
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
	if (!ports || parse_into(skb, 1) != PARSE_OK)
		return TC_ACT_OK;
	scr = bpf_map_lookup_elem(&egress_scratch, &zero);
	if (!scr)
		return TC_ACT_OK;
	p = &scr->p;
	fk = &scr->fk;
	slot = ports->slot[p->sport]; /* (the local port first: a server's port decides without the other's) */
	if (!(slot & ~SE_PORT_OUT_HTTP) && (ports->slot[p->dport] & SE_PORT_OUT_HTTP)) {
		scr->xl_on = XL_OUTBOUND; /* a caller's segment: xlate_outbound looks for its translation */
		if (p->payload_len && !(p->flags & (TCP_RST | TCP_FIN | TCP_SYN)))
			return out_request(skb, p, gen, fk);
		return TC_ACT_OK;
	}
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

/*
 * Both entry points: a segment judged (ingress) or read (egress), then, when the programs answered a
 * refusal in a connection's stream, that connection's segment put into the other end's numbering.
 */
static __always_inline int tc_run(struct __sk_buff *skb, bool out)
{
	int r;

	xl_clear(out);
	r = out ? egress(skb) : ingress(skb);
	if (r != TC_ACT_OK || !replied_in_stream)
		return r;
	if (xl_state(out) == XL_OUTBOUND)
		return xlate_outbound(skb, out);
	return out ? xlate_to_client(skb) : xlate_to_server(skb);
}

SEC("tc")
int tc_ingress(struct __sk_buff *skb)
{
	return tc_run(skb, false);
}

SEC("tc")
int tc_egress(struct __sk_buff *skb)
{
	return tc_run(skb, true);
}

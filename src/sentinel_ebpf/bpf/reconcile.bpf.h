/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Reconciliation of concurrency with the connections that exist, run by the control plane through
 * BPF_PROG_TEST_RUN (program `reconcile`).
 * Part of inbound.bpf.c (one BPF object): included there after the maps and scratch it uses, not on its
 * own.
 */
#ifndef SENTINEL_RECONCILE_BPF_H
#define SENTINEL_RECONCILE_BPF_H

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
	if (f->q_head != f->q_tail)
		release_queue_of(f, &req.key); /* requests pipelined behind it */
	bpf_map_delete_elem(&inflight, &req.key);
	percpu_inc(&dp_counters, DP_CONCURRENCY_REPAIRED);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#endif /* SENTINEL_RECONCILE_BPF_H */

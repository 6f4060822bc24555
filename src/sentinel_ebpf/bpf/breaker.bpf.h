/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Circuit breakers (sentinel-golang core/circuitbreaker): Closed -> Open when the window's slow/error
 * ratio or error count reaches the threshold (after minRequestAmount); Open -> HalfOpen for the first
 * request at or after nextRetry (that request is the probe); HalfOpen -> Closed after probeNum good
 * completions, HalfOpen -> Open on a bad one. Every change is a compare-and-swap on the state and is
 * reported on the cb_events ring buffer.
 */
#ifndef SENTINEL_BREAKER_BPF_H
#define SENTINEL_BREAKER_BPF_H

#include <bpf/bpf_helpers.h>
#include "sentinel.h"
#include "maps.bpf.h"
#include "dataplane.bpf.h"

static __always_inline bool cb_cas(struct breaker_state *b, __u64 from, __u64 to, const struct breaker_k *r,
				   __u32 resource, __u64 now_ms, __u64 snapshot)
{
	struct cb_event *e;

	if (__sync_val_compare_and_swap(&b->state, from, to) != from)
		return false;
	e = bpf_ringbuf_reserve(&cb_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&cb_events_lost, &zero);

		if (lost)
			__sync_fetch_and_add(lost, 1);
		return true;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ms = now_ms;
	e->uid = r->uid;
	e->resource = resource;
	e->from_state = from;
	e->to_state = to;
	e->snapshot_ppb = snapshot;
	bpf_ringbuf_submit(e, 0);
	return true;
}

/* Whether the breaker lets a request through; *probed is set when this request became the probe. */
static __always_inline bool cb_try_pass(const struct breaker_k *r, __u32 resource, __u64 now_ms, bool *probed)
{
	struct breaker_state *b = bpf_map_lookup_elem(&breakers, &r->uid);

	*probed = false;
	if (!b)
		return true; /* no state yet: Closed */
	if (b->state == CB_CLOSED)
		return true;
	if (b->state == CB_OPEN) {
		if (now_ms >= b->next_retry_ms && cb_cas(b, CB_OPEN, CB_HALF_OPEN, r, resource, now_ms, 0)) {
			*probed = true;
			return true;
		}
		return false;
	}
	return r->probe_num > 0; /* HalfOpen */
}

/* The probe was blocked by a later rule: back to Open, nextRetry unchanged. */
static __always_inline void cb_rollback(const struct breaker_k *r, __u32 resource, __u64 now_ms)
{
	struct breaker_state *b = bpf_map_lookup_elem(&breakers, &r->uid);

	if (b)
		cb_cas(b, CB_HALF_OPEN, CB_OPEN, r, resource, now_ms, 1000000000ULL);
}

static __always_inline void cb_on_complete(const struct breaker_k *r, __u32 resource, __u64 now_ms, __u64 rt_ms,
					   bool error)
{
	struct breaker_state *b = bpf_map_lookup_elem(&breakers, &r->uid);
	__u64 bucket_ms = r->bucket_ms ? r->bucket_ms : 1;
	__u64 start = now_ms - now_ms % bucket_ms, bad_sum = 0, total = 0;
	__u32 nbuckets = r->interval_ms / bucket_ms, idx;
	bool bad = r->strategy == CB_SLOW_REQUEST_RATIO ? rt_ms > r->max_rt_ms : error;
	struct cb_bucket *cur;

	if (!b)
		return;
	if (nbuckets == 0 || nbuckets > SE_CB_BUCKETS_MAX)
		nbuckets = 1;
	idx = (now_ms / bucket_ms) % nbuckets;
	asm volatile("" : "+r"(idx));
	if (idx >= SE_CB_BUCKETS_MAX)
		return;
	cur = &b->buckets[idx];
	if (cur->start_ms != start) {
		__u64 old = cur->start_ms;

		if (old > start)
			return; /* the clock went back */
		if (__sync_val_compare_and_swap(&cur->start_ms, old, start) == old) {
			cur->bad = 0;
			cur->total = 0;
		}
	}
	if (bad)
		__sync_fetch_and_add(&cur->bad, 1);
	__sync_fetch_and_add(&cur->total, 1);

	if (b->state == CB_OPEN)
		return;
	if (b->state == CB_HALF_OPEN) {
		if (bad) {
			/* nextRetry first: it means nothing until the state says Open */
			b->next_retry_ms = now_ms + r->retry_timeout_ms;
			if (cb_cas(b, CB_HALF_OPEN, CB_OPEN, r, resource, now_ms, 1000000000ULL))
				b->probes = 0;
			return;
		}
		__u64 probes = __sync_add_and_fetch(&b->probes, 1);

		if (r->probe_num == 0 || probes >= r->probe_num) {
			if (cb_cas(b, CB_HALF_OPEN, CB_CLOSED, r, resource, now_ms, 0)) {
				b->probes = 0;
				for (int i = 0; i < SE_CB_BUCKETS_MAX; i++) {
					b->buckets[i].bad = 0;
					b->buckets[i].total = 0;
				}
			}
		}
		return;
	}
	for (int i = 0; i < SE_CB_BUCKETS_MAX; i++) {
		const struct cb_bucket *c = &b->buckets[i];

		if (i >= nbuckets)
			break;
		if (now_ms >= c->start_ms && now_ms - c->start_ms <= r->interval_ms) { /* not deprecated */
			bad_sum += c->bad;
			total += c->total;
		}
	}
	if (total < r->min_request || total == 0)
		return;
	if (r->strategy == CB_ERROR_COUNT) {
		if (bad_sum >= r->threshold_ppb) {
			b->next_retry_ms = now_ms + r->retry_timeout_ms;
			cb_cas(b, CB_CLOSED, CB_OPEN, r, resource, now_ms, bad_sum);
		}
		return;
	}
	/* ratio >= threshold, with sentinel-golang's 1e-8 tolerance */
	if (bad_sum * 1000000000ULL + 10 * total >= r->threshold_ppb * total) {
		b->next_retry_ms = now_ms + r->retry_timeout_ms;
		cb_cas(b, CB_CLOSED, CB_OPEN, r, resource, now_ms, bad_sum * 1000000000ULL / total);
	}
}

#endif /* SENTINEL_BREAKER_BPF_H */

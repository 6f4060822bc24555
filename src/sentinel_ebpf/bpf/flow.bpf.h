/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Flow rules: Reject (sliding window count) and Throttling (leaky bucket as a virtual queue). */
#ifndef SENTINEL_FLOW_BPF_H
#define SENTINEL_FLOW_BPF_H

#include "stat.bpf.h"

/* Compare-and-swap tries of a throttling or hotspot update before it lets the request pass (counted as
 * throttle_contended), at most SE_CAS_TRIES; set before load (0: every update is contended, for the test
 * of that path). */
const volatile __u32 cas_tries = SE_CAS_TRIES;

/*
 * Throttling cannot sleep in the kernel: a request whose wait would be <= maxQueueingTimeMs is admitted
 * at once and reserves its slot (last_passed moves forward by one cost), so the admitted rate is exact
 * over time. Compare-and-swap retries are bounded; on persistent contention the request passes (*waited = 2).
 */
static __always_inline bool throttle_admit(__u64 *last_passed, const struct flow_rule_k *r, __u64 cost_ns,
					   __u64 now, __u64 *waited)
{
	if (cost_ns == 0)
		return false;
	for (int attempt = 0; attempt < SE_CAS_TRIES; attempt++) {
		__u64 last = *last_passed;

		if (attempt >= cas_tries)
			break;
		__u64 expected = last + cost_ns;

		if (expected <= now) {
			if (__sync_val_compare_and_swap(last_passed, last, now) == last)
				return true;
			continue;
		}
		if (expected - now > r->max_queue_ns)
			return false;
		if (__sync_val_compare_and_swap(last_passed, last, expected) == last) {
			*waited = 1;
			return true;
		}
	}
	*waited = 2; /* contended: the caller counts it */
	return true;
}

static __always_inline bool reject_admit(const struct res_stats *st, const struct flow_rule_k *r,
					 __u64 threshold_milli, __u64 now_ms)
{
	return (window_pass(st, now_ms, r->interval_ms) + 1) * 1000 <= threshold_milli;
}

#endif /* SENTINEL_FLOW_BPF_H */

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* System adaptive protection over all inbound traffic (sentinel-golang core/system), BBR included. */
#ifndef SENTINEL_SYSTEM_BPF_H
#define SENTINEL_SYSTEM_BPF_H

#include "stat.bpf.h"

/* checkBbrSimple: block only when concurrency exceeds what the best observed completion rate can carry. */
static __always_inline bool bbr_allows(const struct res_stats *in, __s64 concurrency, __u64 now_ms)
{
	struct window_view v;
	/* the busiest 500 ms bucket, per second */
	__u64 max_complete_per_s;

	if (concurrency <= 1)
		return true;
	window_completions(in, now_ms, &v);
	max_complete_per_s = v.max_bucket_complete * (1000 / SE_BUCKET_MS);
	/* Sentinel floors the min RT at 1 ms */
	return (__u64)concurrency * 1000 <= max_complete_per_s * (v.min_rt_ms ? v.min_rt_ms : 1);
}

/* Returns true when every system rule lets the request through. A metric not read yet passes. */
static __always_inline bool system_admit(const struct sys_conf *sc, const struct res_stats *in,
					 const struct sys_metrics *m, __u64 now_ms)
{
	__s64 concurrency = in->concurrency;

	for (int i = 0; i < SE_SYSTEM_RULES_MAX; i++) {
		const struct sys_rule_k *r = &sc->rules[i];
		__u64 value_milli;

		if (i >= sc->nrules)
			break;
		switch (r->metric) {
		case SYS_INBOUND_QPS:
			if (window_pass(in, now_ms, 1000) * 1000 >= r->trigger_milli)
				return false;
			continue;
		case SYS_CONCURRENCY:
			if ((concurrency > 0 ? (__u64)concurrency : 0) * 1000 >= r->trigger_milli)
				return false;
			continue;
		case SYS_AVG_RT: {
			struct window_view v;

			window_completions(in, now_ms, &v);
			if ((v.complete ? v.rt_sum_ms / v.complete : 0) * 1000 >= r->trigger_milli)
				return false;
			continue;
		}
		case SYS_LOAD:
			if (!m || !m->load_valid)
				continue;
			value_milli = m->load_milli;
			break;
		case SYS_CPU_USAGE:
			if (!m || !m->cpu_valid)
				continue;
			value_milli = m->cpu_milli;
			break;
		default:
			continue;
		}
		if (value_milli > r->trigger_milli && (!r->bbr || !bbr_allows(in, concurrency, now_ms)))
			return false;
	}
	return true;
}

#endif /* SENTINEL_SYSTEM_BPF_H */

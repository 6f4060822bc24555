/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* LeapArray statistics (Sentinel's 20 x 500 ms buckets per resource) and the data-plane clock. */
#ifndef SENTINEL_STAT_BPF_H
#define SENTINEL_STAT_BPF_H

#include <bpf/bpf_helpers.h>
#include "sentinel.h"

/* Tests replace the clock: set before load, so production code has no branch left. */
const volatile bool use_test_clock = false;
__u64 test_clock_ns = 0;

static __always_inline __u64 now_ns(void)
{
	return use_test_clock ? test_clock_ns : bpf_ktime_get_ns();
}

/*
 * The bucket for now_ms, reset when it holds an older window. The reset is a compare-and-swap on the
 * start time; an increment racing with the zeroing on another CPU can be lost (Sentinel takes a lock
 * here), which costs at most a count at a bucket boundary. A clock that went back gets no bucket.
 */
static __always_inline struct stat_bucket *current_bucket(struct res_stats *st, __u64 now_ms)
{
	__u64 start = now_ms - now_ms % SE_BUCKET_MS;
	__u32 idx = (now_ms / SE_BUCKET_MS) % SE_BUCKETS;
	struct stat_bucket *b;
	__u64 old;

	asm volatile("" : "+r"(idx)); /* keep the bound check: the verifier cannot see through % */
	if (idx >= SE_BUCKETS)
		return NULL;
	b = &st->buckets[idx];
	old = b->start_ms;
	if (old == start)
		return b;
	if (old > start)
		return NULL;
	if (__sync_val_compare_and_swap(&b->start_ms, old, start) == old) {
		b->pass = 0;
		b->block = 0;
		b->complete = 0;
		b->error = 0;
		b->rt_sum_ms = 0;
		b->min_rt_ms = SE_MIN_RT_INIT_MS;
	}
	return b;
}

/* Is a bucket that starts at `start` inside the window [cur - interval + one bucket, cur]? */
static __always_inline bool in_window(__u64 start, __u64 now_ms, __u32 interval_ms)
{
	__u64 cur = now_ms - now_ms % SE_BUCKET_MS;
	__u64 lo = cur + SE_BUCKET_MS > interval_ms ? cur + SE_BUCKET_MS - interval_ms : 0;

	return start >= lo && start <= cur;
}

/*
 * Passes in the sliding window [current bucket - interval + one bucket, current bucket]: only the
 * interval / SE_BUCKET_MS most recent slots can hold such a bucket (a 1 s rule reads 2 of the 20).
 */
static __always_inline __u64 window_pass(const struct res_stats *st, __u64 now_ms, __u32 interval_ms)
{
	__u64 start = now_ms - now_ms % SE_BUCKET_MS, sum = 0;
	__u32 idx = (now_ms / SE_BUCKET_MS) % SE_BUCKETS, k = interval_ms / SE_BUCKET_MS;

	for (int i = 0; i < SE_BUCKETS; i++) {
		const struct stat_bucket *b;

		if (i >= k || start < (__u64)i * SE_BUCKET_MS)
			break;
		asm volatile("" : "+r"(idx)); /* keep the bound check: the verifier cannot see through % */
		if (idx >= SE_BUCKETS)
			break;
		b = &st->buckets[idx];
		if (b->start_ms == start - (__u64)i * SE_BUCKET_MS)
			sum += b->pass;
		idx = idx ? idx - 1 : SE_BUCKETS - 1;
	}
	return sum;
}

/* The 1 s view the system rules read: completions, their RT sum, the busiest bucket, the fastest RT. */
struct window_view {
	__u64 complete;
	__u64 rt_sum_ms;
	__u64 max_bucket_complete;
	__u64 min_rt_ms;
};

static __always_inline void window_completions(const struct res_stats *st, __u64 now_ms, struct window_view *v)
{
	v->complete = 0;
	v->rt_sum_ms = 0;
	v->max_bucket_complete = 0;
	v->min_rt_ms = SE_MIN_RT_INIT_MS;
	for (int i = 0; i < SE_BUCKETS; i++) {
		const struct stat_bucket *b = &st->buckets[i];

		if (!in_window(b->start_ms, now_ms, 1000))
			continue;
		v->complete += b->complete;
		v->rt_sum_ms += b->rt_sum_ms;
		if (b->complete > v->max_bucket_complete)
			v->max_bucket_complete = b->complete;
		if (b->min_rt_ms < v->min_rt_ms)
			v->min_rt_ms = b->min_rt_ms;
	}
}

static __always_inline void stat_pass(struct res_stats *st, __u64 now_ms)
{
	struct stat_bucket *b = current_bucket(st, now_ms);

	if (b)
		__sync_fetch_and_add(&b->pass, 1);
	__sync_fetch_and_add(&st->total_pass, 1);
}

static __always_inline void stat_block(struct res_stats *st, __u64 now_ms, __u32 block_type)
{
	struct stat_bucket *b = current_bucket(st, now_ms);

	if (b)
		__sync_fetch_and_add(&b->block, 1);
	__sync_fetch_and_add(&st->total_block, 1);
	if (block_type < BLOCK_TYPE_MAX)
		__sync_fetch_and_add(&st->block_by_type[block_type], 1);
}

static __always_inline void stat_complete(struct res_stats *st, __u64 now_ms, __u64 rt_ms, bool error)
{
	struct stat_bucket *b = current_bucket(st, now_ms);

	if (b) {
		__sync_fetch_and_add(&b->complete, 1);
		__sync_fetch_and_add(&b->rt_sum_ms, rt_ms);
		if (error)
			__sync_fetch_and_add(&b->error, 1);
		for (int i = 0; i < 4; i++) { /* bounded compare-and-swap minimum */
			__u64 old = b->min_rt_ms;

			if (rt_ms >= old || __sync_val_compare_and_swap(&b->min_rt_ms, old, rt_ms) == old)
				break;
		}
	}
	__sync_fetch_and_add(&st->total_complete, 1);
	__sync_fetch_and_add(&st->total_rt_ms, rt_ms);
	if (error)
		__sync_fetch_and_add(&st->total_error, 1);
}

#endif /* SENTINEL_STAT_BPF_H */

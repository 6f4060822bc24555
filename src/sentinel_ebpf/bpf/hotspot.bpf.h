/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Hotspot parameter flow control (sentinel-golang core/hotspot): per parameter value state in an LRU
 * shared by all rules, keyed by (rule uid, FNV-1a hash of the value). Parameters are properties of the
 * traffic: the client address, an HTTP header, or a query parameter of the request line.
 */
#ifndef SENTINEL_HOTSPOT_BPF_H
#define SENTINEL_HOTSPOT_BPF_H

#include <bpf/bpf_helpers.h>
#include "sentinel.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* Updated with compare-and-swap as sentinel-golang does (LRU maps cannot hold a bpf_spin_lock). */
struct hot_state {
	__s64 tokens;               /* QPS Reject: tokens left */
	__u64 last_ms;              /* QPS Reject: last refill; Throttling: last pass */
	__s64 concurrency;          /* Concurrency: in flight with this value */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_HOT_VALUES_MAX);
	__type(key, struct hot_key);
	__type(value, struct hot_state);
} hot_values SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct hot_key);
	__type(value, __u64);               /* specific item threshold */
} hot_specific SEC(".maps");

/* Scratch for finding a parameter: the request's first bytes and the search state. The state lives in
 * memory, not registers, so the verifier sees one state per loop iteration. */
struct param_scan {
	__u8 buf[SE_PARAM_PEEK];
	__u32 len;
	__u32 match;
	__u32 vstart;
	__u32 vend;
	__u32 found;
	__u32 prev;
	__u64 hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct param_scan);
} param_scratch SEC(".maps");

static __always_inline __u8 lower(__u8 c)
{
	return c >= 'A' && c <= 'Z' ? c | 0x20 : c;
}

struct scan_ctx {
	struct param_scan *s;
	const struct hotspot_rule_k *r;
	__u32 query;
	__u32 plen;
};

/* One byte of the search (a bpf_loop callback: verified once, whatever the length). */
static long scan_byte(__u32 i, struct scan_ctx *ctx)
{
	struct param_scan *s = ctx->s;
	const struct hotspot_rule_k *r = ctx->r;
	__u32 m;
	__u8 c;

	if (i >= s->len || i >= SE_PARAM_PEEK)
		return 1;
	asm volatile("" : "+r"(i));
	c = s->buf[i & (SE_PARAM_PEEK - 1)];
	if (s->found) { /* inside the value */
		if (c == '\r' || c == '\n' || (ctx->query && (c == '&' || c == ' ' || c == '#'))) {
			s->vend = i;
			s->found = 2;
			return 1;
		}
		return 0;
	}
	if (ctx->query && (c == '\r' || c == '\n'))
		return 1; /* the request line ended */
	if (!ctx->query)
		c = lower(c);
	m = s->match;
	if (m >= SE_HOT_PATTERN_MAX)
		m = 0;
	if (c == r->pattern[m] && (m || !ctx->query || s->prev == '?' || s->prev == '&')) {
		s->match = m + 1;
		if (s->match == ctx->plen) {
			s->found = 1;
			s->vstart = i + 1;
		}
	} else {
		s->match = c == r->pattern[0] && (!ctx->query || s->prev == '?' || s->prev == '&') ? 1 : 0;
	}
	s->prev = c;
	return 0;
}

/*
 * Find the rule's parameter in the scanned bytes: header pattern "\n<name>:" (case-insensitive), query
 * pattern "<name>=" right after '?' or '&' on the request line. Sets vstart/vend; false when absent.
 */
static __always_inline bool find_param(struct param_scan *s, const struct hotspot_rule_k *r)
{
	struct scan_ctx ctx = { .s = s, .r = r, .query = r->param == HOT_QUERY, .plen = r->pattern_len };

	if (ctx.plen == 0 || ctx.plen > SE_HOT_PATTERN_MAX)
		return false;
	s->match = 0;
	s->found = 0;
	s->prev = 0;
	bpf_loop(SE_PARAM_PEEK, scan_byte, &ctx, 0);
	if (!s->found)
		return false;
	if (s->found == 1)
		s->vend = s->len; /* the value runs to the end of what was read */
	return true;
}

static __always_inline __u64 fnv1a(const __u8 *buf, __u32 start, __u32 end, bool skip_space)
{
	__u64 h = FNV_OFFSET;
	bool leading = skip_space;

	for (int i = 0; i < SE_HOT_VALUE_MAX + 8; i++) {
		__u32 j = start + i;
		__u8 c;

		if (j >= end)
			break;
		asm volatile("" : "+r"(j));
		j &= SE_PARAM_PEEK - 1; /* a bound the verifier can see (j < SE_PARAM_PEEK already) */
		c = buf[j];
		if (leading && (c == ' ' || c == '\t'))
			continue;
		leading = false;
		h ^= c;
		h *= FNV_PRIME;
	}
	return h;
}

static __always_inline __u64 hash_addr(const __u8 *addr)
{
	__u64 h = FNV_OFFSET;

	for (int i = 0; i < SE_ADDR_LEN; i++) {
		h ^= addr[i];
		h *= FNV_PRIME;
	}
	return h;
}

enum hot_verdict { HOT_PASS = 0, HOT_BLOCK = 1 };

/* One value's check (sentinel-golang's three traffic-shaping checkers). */
static __always_inline int hot_check(const struct hotspot_rule_k *r, const struct hot_key *k, __u64 now_ms)
{
	__u64 *specific = bpf_map_lookup_elem(&hot_specific, k);
	__s64 limit = specific ? *specific : r->threshold;
	struct hot_state *st = bpf_map_lookup_elem(&hot_values, k);

	if (r->metric == 0) { /* Concurrency: first sight passes */
		if (!st) {
			struct hot_state fresh = {};

			bpf_map_update_elem(&hot_values, k, &fresh, BPF_NOEXIST);
			return HOT_PASS;
		}
		return st->concurrency + 1 <= limit ? HOT_PASS : HOT_BLOCK;
	}
	if (limit <= 0)
		return HOT_BLOCK;
	if (r->behavior == 0) { /* QPS Reject: token bucket */
		__s64 max = limit + (__s64)r->burst;

		if (1 > max)
			return HOT_BLOCK;
		if (!st) {
			struct hot_state fresh = { .tokens = max - 1, .last_ms = now_ms };

			if (bpf_map_update_elem(&hot_values, k, &fresh, BPF_NOEXIST) == 0)
				return HOT_PASS;
			st = bpf_map_lookup_elem(&hot_values, k);
			if (!st)
				return HOT_PASS;
		}
		for (int attempt = 0; attempt < 4; attempt++) {
			__u64 last = st->last_ms;
			__s64 rest = st->tokens;

			if (now_ms > last && now_ms - last > r->duration_ms && r->duration_ms) {
				__s64 add = (__s64)((now_ms - last) * limit / r->duration_ms);
				__s64 next = add + rest > max ? max - 1 : add + rest - 1;

				if (next < 0)
					return HOT_BLOCK;
				if (__sync_val_compare_and_swap(&st->tokens, rest, next) == rest) {
					st->last_ms = now_ms;
					return HOT_PASS;
				}
			} else {
				if (rest - 1 < 0)
					return HOT_BLOCK;
				if (__sync_val_compare_and_swap(&st->tokens, rest, rest - 1) == rest)
					return HOT_PASS;
			}
		}
		return HOT_PASS; /* persistent contention: fail open */
	}
	/* QPS Throttling */
	__u64 cost = r->duration_ms / limit;

	if (!st) {
		struct hot_state fresh = { .last_ms = now_ms - r->duration_ms + cost };

		/* first sight: expected = now - duration + cost <= now, so it passes and sets last = now */
		fresh.last_ms = now_ms;
		if (bpf_map_update_elem(&hot_values, k, &fresh, BPF_NOEXIST) == 0)
			return HOT_PASS;
		st = bpf_map_lookup_elem(&hot_values, k);
		if (!st)
			return HOT_PASS;
	}
	for (int attempt = 0; attempt < 4; attempt++) {
		__u64 last = st->last_ms, expected;

		if (last + r->duration_ms < now_ms)
			expected = now_ms - r->duration_ms + cost;
		else
			expected = last + cost;
		if (expected > now_ms && expected - now_ms >= r->max_queue_ms)
			return HOT_BLOCK;
		if (__sync_val_compare_and_swap(&st->last_ms, last, expected > now_ms ? expected : now_ms) == last)
			return HOT_PASS;
	}
	return HOT_PASS;
}

#endif /* SENTINEL_HOTSPOT_BPF_H */

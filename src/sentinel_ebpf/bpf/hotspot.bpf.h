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
#include "dataplane.bpf.h"
#include "flow.bpf.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static __always_inline __u8 lower(__u8 c)
{
	return c >= 'A' && c <= 'Z' ? c | 0x20 : c;
}

static __always_inline int hex_digit(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
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
	if (!s->begun) {
		if (c == '\r' || c == '\n')
			return 0; /* an empty line before the request line: not the line's or the head's end */
		s->begun = 1;
	}
	if (s->found) { /* inside the value */
		if (c == '\r' || c == '\n' || (ctx->query && (c == '&' || c == ' ' || c == '#'))) {
			s->vend = i;
			s->found = 2;
			return 1;
		}
		return 0;
	}
	if (ctx->query && (c == '\r' || c == '\n')) {
		s->ended = 1; /* the request line ended */
		return 1;
	}
	if (!ctx->query && c == '\n' && (s->prev == '\n' || (s->prev == '\r' && s->prev2 == '\n'))) {
		s->ended = 1; /* the empty line: the head ended */
		return 1;
	}
	if (ctx->query && s->pct) {
		/* a name is matched %XX-decoded; a decoded '=' or '&' is no delimiter */
		int v = hex_digit(c);

		if (v >= 0 && s->pct == 1) {
			s->pct = 2;
			s->pct_hi = v;
			return 0;
		}
		s->pct = 0;
		if (v < 0) {
			s->match = 0; /* not an escape: no name matches across it */
		} else {
			c = s->pct_hi << 4 | v;
			if (c == '=' || c == '&' || c == '?')
				c = 0;
		}
	} else if (ctx->query && c == '%') {
		s->pct = 1;
		return 0;
	}
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
	s->prev2 = s->prev;
	s->prev = c;
	return 0;
}

/* find_param()'s answers. */
#define PARAM_ABSENT 0   /* not in a request line (query) or head (header) read to its end */
#define PARAM_FOUND 1
#define PARAM_UNSEEN 2   /* not in what was read, and the line or head goes on past it: it may be there */

/*
 * Find the rule's parameter in the scanned bytes: header pattern "\n<name>:" (case-insensitive), query
 * pattern "<name>=" right after '?' or '&' on the request line. Sets vstart/vend when found.
 */
static __always_inline int find_param(struct param_scan *s, const struct hotspot_rule_k *r)
{
	struct scan_ctx ctx = { .s = s, .r = r, .query = r->param == HOT_QUERY, .plen = r->pattern_len };

	if (ctx.plen == 0 || ctx.plen > SE_HOT_PATTERN_MAX)
		return PARAM_ABSENT;
	s->match = 0;
	s->found = 0;
	s->ended = 0;
	s->begun = 0;
	s->prev = 0;
	s->prev2 = 0;
	s->pct = 0;
	bpf_loop(SE_PARAM_PEEK, scan_byte, &ctx, 0);
	if (!s->found)
		return s->ended ? PARAM_ABSENT : PARAM_UNSEEN;
	if (s->found == 1)
		s->vend = s->len; /* the value runs to the end of what was read */
	return PARAM_FOUND;
}

/* The bucket of requests whose parameter could not be read (PARAM_UNSEEN, or a value cut short by the end
 * of what was read): one for all of them, so that hiding a value past the search gains nothing. */
#define HOT_UNSEEN_HASH 0x756e7365656e2121ULL

/* buf[j], j masked where the compiler cannot drop the mask (it knows j < SE_PARAM_PEEK; the verifier not) */
static __always_inline __u8 buf_at(const struct param_scan *s, __u32 j)
{
	asm volatile("" : "+r"(j));
	return s->buf[j & (SE_PARAM_PEEK - 1)];
}

static __always_inline bool is_ows(__u8 c)
{
	return c == ' ' || c == '\t';
}

/* One step of trimming a header value's optional whitespace, at either end (a bpf_loop callback). */
/* The state lives in the map value (s), not on the stack, so the verifier does not follow its values. */
struct hash_ctx {
	struct param_scan *s;
	__u32 query;
};

static long trim_step(__u32 i, struct hash_ctx *ctx)
{
	struct param_scan *s = ctx->s;
	__u32 a = s->vstart, b = s->vend;

	if (a >= b || b > SE_PARAM_PEEK)
		return 1;
	if (is_ows(buf_at(s, a))) {
		s->vstart = a + 1;
		return 0;
	}
	if (is_ows(buf_at(s, b - 1))) {
		s->vend = b - 1;
		return 0;
	}
	return 1;
}

/* One byte of the value into the hash; a query value's %XX counts as the byte it encodes. */
static long hash_step(__u32 i, struct hash_ctx *ctx)
{
	struct param_scan *s = ctx->s;
	__u32 j = s->vstart + i, end = s->vend;
	__u8 c;

	if (j >= end || end > SE_PARAM_PEEK || s->hashed >= SE_HOT_VALUE_MAX)
		return 1;
	if (s->skip) {
		s->skip--;
		return 0;
	}
	c = buf_at(s, j);
	if (ctx->query && c == '%' && j + 2 < end) {
		int hi = hex_digit(buf_at(s, j + 1)), lo = hex_digit(buf_at(s, j + 2));

		if (hi >= 0 && lo >= 0) {
			c = hi << 4 | lo;
			s->skip = 2;
		}
	}
	s->hash = (s->hash ^ c) * FNV_PRIME;
	s->hashed++;
	return 0;
}

/*
 * FNV-1a of the value find_param located: a header's value without its optional whitespace, a query
 * value %XX-decoded, at most SE_HOT_VALUE_MAX bytes of it (user space hashes specific items the same way).
 */
static __always_inline __u64 hash_value(struct param_scan *s, bool header)
{
	struct hash_ctx ctx = { .s = s, .query = !header };

	s->hash = FNV_OFFSET;
	s->hashed = 0;
	s->skip = 0;
	if (header)
		bpf_loop(SE_PARAM_PEEK, trim_step, &ctx, 0);
	bpf_loop(SE_HOT_VALUE_SCAN, hash_step, &ctx, 0);
	return s->hash;
}

/* FNV-1a of a client address; an IPv6 one keyed by its first `v6_prefix_len` bits (an IPv4 one whole). */
static __always_inline __u64 hash_addr(const __u8 *addr, __u8 family, __u8 v6_prefix_len)
{
	__u32 bits = family == 6 ? v6_prefix_len : 8 * SE_ADDR_LEN;
	__u64 h = FNV_OFFSET;

	for (int i = 0; i < SE_ADDR_LEN; i++) {
		__u8 b = addr[i];

		if (bits <= i * 8)
			b = 0;
		else if (bits < i * 8 + 8)
			b &= 0xff << (i * 8 + 8 - bits);
		h ^= b;
		h *= FNV_PRIME;
	}
	return h;
}

enum hot_verdict { HOT_PASS = 0, HOT_BLOCK = 1, HOT_PASS_CONTENDED = 2 };

/* A value seen for the first time: its state starts as `fresh` and this request passes (NULL). When
 * another CPU made the state first, the state it made, which the caller updates as for any value (NULL
 * when it is gone again: the request passes). */
static __always_inline struct hot_state *hot_first_sight(const struct hot_key *k, const struct hot_state *fresh)
{
	if (bpf_map_update_elem(&hot_values, k, fresh, BPF_NOEXIST) == 0)
		return NULL;
	return bpf_map_lookup_elem(&hot_values, k);
}

/* One value's check (sentinel-golang's three traffic-shaping checkers). */
static __always_inline int hot_check(const struct hotspot_rule_k *r, const struct hot_key *k, __u64 now_ns)
{
	__u64 now_ms = now_ns / 1000000;
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
			struct hot_state fresh = { .tokens = max - 1, .last = now_ms };

			st = hot_first_sight(k, &fresh);
			if (!st)
				return HOT_PASS;
		}
		for (int attempt = 0; attempt < SE_CAS_TRIES; attempt++) {
			__u64 last = st->last;
			__s64 rest = st->tokens;

			if (attempt >= cas_tries)
				break;
			if (now_ms > last && now_ms - last > r->duration_ms && r->duration_ms) {
				__s64 add = (__s64)((now_ms - last) * limit / r->duration_ms);
				__s64 next = add + rest > max ? max - 1 : add + rest - 1;

				if (next < 0)
					return HOT_BLOCK;
				if (__sync_val_compare_and_swap(&st->tokens, rest, next) == rest) {
					st->last = now_ms;
					return HOT_PASS;
				}
			} else {
				if (rest - 1 < 0)
					return HOT_BLOCK;
				if (__sync_val_compare_and_swap(&st->tokens, rest, rest - 1) == rest)
					return HOT_PASS;
			}
		}
		return HOT_PASS_CONTENDED; /* persistent contention: fail open */
	}
	/* QPS Throttling, in nanoseconds: a cost rounded to milliseconds would admit 1,000/s for a limit of
	 * 600/s, and nothing would limit above 1,000/s. Rounded up: never more than the limit. */
	__u64 duration_ns = r->duration_ms * 1000000, max_queue_ns = r->max_queue_ms * 1000000;
	__u64 cost = (duration_ns + limit - 1) / (__u64)limit;

	if (!st) {
		/* first sight: expected = now - duration + cost <= now, so it passes and sets last = now */
		struct hot_state fresh = { .last = now_ns };

		st = hot_first_sight(k, &fresh);
		if (!st)
			return HOT_PASS;
	}
	for (int attempt = 0; attempt < SE_CAS_TRIES; attempt++) {
		__u64 last = st->last, expected;

		if (attempt >= cas_tries)
			break;
		if (last + duration_ns < now_ns)
			expected = now_ns - duration_ns + cost;
		else
			expected = last + cost;
		if (expected > now_ns && expected - now_ns >= max_queue_ns)
			return HOT_BLOCK;
		if (__sync_val_compare_and_swap(&st->last, last, expected > now_ns ? expected : now_ns) == last)
			return HOT_PASS;
	}
	return HOT_PASS_CONTENDED;
}

#endif /* SENTINEL_HOTSPOT_BPF_H */

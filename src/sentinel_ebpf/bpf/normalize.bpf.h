/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * A request target in the form servers match it: percent-encoded printable characters decoded (once),
 * dot segments removed (RFC 3986 section 5.2.4), runs of slashes merged. The query (from a '?' sent as
 * such) is kept as it is; a '#' ends the target (nginx ignores what follows). Servers such as nginx do
 * this before they pick a location, so a limit on /api must see "/%61pi", "//api", "/./api" and
 * "/x/../api" as /api. Run only when the target needs it (a '%', a slash followed by '.' or '/', or a
 * target longer than what the fast path reads). The whole path is read: a later ".." can reach back to
 * any earlier segment, so a path that goes on past what is read (SE_NORM_MAX bytes, SE_NORM_DEPTH
 * segments) cannot be told (NORM_UNREAD), and one that goes on past its segment is incomplete.
 */
#ifndef SENTINEL_NORMALIZE_BPF_H
#define SENTINEL_NORMALIZE_BPF_H

#include "sentinel.h"
#include "dataplane.bpf.h"

/* A target's first SE_PATH_MAX bytes as little-endian words (a type, so global functions can take it). */
struct path_words {
	__u64 w[SE_PATH_MAX / 8];
};

static __always_inline int hex_value(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The segment being written (after the last kept slash) is "." or "..": remove it (and, for "..", the
 * segment before it), leaving the output at a slash. */
static __always_inline void drop_dot_segment(struct norm_scratch *n)
{
	__u32 top, seg, len;

	if (n->depth == 0 || n->depth > SE_NORM_DEPTH)
		return;
	top = n->slash[(n->depth - 1) & (SE_NORM_DEPTH - 1)];
	seg = top + 1;
	if (seg > n->out_len)
		return;
	len = n->out_len - seg;
	if (len == 1 && n->out[seg & (SE_NORM_MAX - 1)] == '.') {
		n->out_len = seg;
	} else if (len == 2 && n->out[seg & (SE_NORM_MAX - 1)] == '.' && n->out[(seg + 1) & (SE_NORM_MAX - 1)] == '.') {
		if (n->depth > 1)
			n->depth--; /* the segment before ".." goes too; at the root, ".." stays at the root */
		n->out_len = n->slash[(n->depth - 1) & (SE_NORM_DEPTH - 1)] + 1;
	}
}

static __always_inline void emit(struct norm_scratch *n, __u8 c)
{
	if (n->out_len < SE_NORM_MAX)
		n->out[n->out_len & (SE_NORM_MAX - 1)] = c;
	n->out_len++;
}

/* normalize_target()'s answers besides a length. */
#define NORM_INCOMPLETE 0xffffffffU /* the path goes on past the segment: the request line is incomplete */
#define NORM_UNREAD 0xfffffffeU     /* the path goes on past SE_NORM_MAX bytes or SE_NORM_DEPTH segments */

#define NORM_DONE 1                 /* norm_scratch done: the path ended (or its query holds SE_PATH_MAX) */
#define NORM_TOO_DEEP 2             /* ... more segments than slash[] remembers */

/* bpf_loop's context must live on the stack: it carries the scratch. */
struct norm_ctx {
	struct norm_scratch *n;
};

/* One input byte (a bpf_loop callback: verified once, whatever the length). */
static long normalize_byte(__u32 i, struct norm_ctx *ctx)
{
	struct norm_scratch *n = ctx->n;
	bool decoded = false;
	__u8 c;

	if (i >= n->in_len || i >= SE_NORM_MAX || n->done || n->out_len >= SE_NORM_MAX)
		return 1;
	asm volatile("" : "+r"(i)); /* keep the masks below: clang knows i < SE_NORM_MAX, the verifier not */
	if (n->skip) {
		n->skip--;
		return 0;
	}
	c = n->in[i & (SE_NORM_MAX - 1)];
	if (c == ' ' || c == '\r' || c == '\n' || c == '#') {
		if (!n->query)
			drop_dot_segment(n);
		n->done = NORM_DONE;
		return 1;
	}
	if (n->query) {
		if (n->out_len >= SE_PATH_MAX) {
			n->done = NORM_DONE; /* routes are matched on SE_PATH_MAX bytes: the rest cannot change it */
			return 1;
		}
		emit(n, c);
		return 0;
	}
	if (c == '%' && i + 2 < n->in_len && i + 2 < SE_NORM_MAX) {
		__u32 j1 = i + 1, j2 = i + 2;
		int hi, lo;
		__u8 v;

		asm volatile("" : "+r"(j1), "+r"(j2)); /* as above */
		hi = hex_value(n->in[j1 & (SE_NORM_MAX - 1)]);
		lo = hex_value(n->in[j2 & (SE_NORM_MAX - 1)]);
		v = (__u8)(hi << 4 | lo);

		if (hi >= 0 && lo >= 0 && v > ' ' && v < 0x7f && v != '%') {
			c = v; /* decoded once: a '%' it yields stays a '%' */
			n->skip = 2;
			decoded = true;
		}
	}
	if (c == '?' && !decoded) { /* (a '?' from %3F is a path character: nginx reads it so) */
		drop_dot_segment(n);
		n->query = 1;
		emit(n, c);
		return 0;
	}
	if (c == '/') {
		drop_dot_segment(n);
		if (n->out_len && n->out[(n->out_len - 1) & (SE_NORM_MAX - 1)] == '/')
			return 0; /* "//" is "/" */
		if (n->depth < SE_NORM_DEPTH)
			n->slash[n->depth & (SE_NORM_DEPTH - 1)] = n->out_len;
		else
			n->done = NORM_TOO_DEEP; /* deeper than remembered: a ".." later could not be followed */
		n->depth++;
		emit(n, c);
		return 0;
	}
	emit(n, c);
	return 0;
}

/*
 * Normalise the target at `off` (`len` bytes left in the segment) into the first SE_PATH_MAX bytes of
 * `path` (zero after them); returns its length (SE_PATH_MAX when at least that long), 0 when it could
 * not be read, NORM_INCOMPLETE or NORM_UNREAD. A global function: verified once.
 */
__noinline __u32 normalize_target(struct __sk_buff *skb, __u32 off, __u32 len, struct path_words *pw)
{
	__u64 *path;
	__u32 zero = 0, n;
	struct norm_scratch *s = bpf_map_lookup_elem(&norm_scratch, &zero);
	struct norm_ctx ctx;

	if (!skb || !s || !pw || len == 0)
		return 0;
	path = pw->w;
	n = len < SE_NORM_MAX ? len : SE_NORM_MAX;
	n = ((n - 1) & (SE_NORM_MAX - 1)) + 1;
	if (bpf_skb_load_bytes(skb, off, s->in, n))
		return 0;
	s->in_len = n;
	s->out_len = 0;
	s->depth = 0;
	s->skip = 0;
	s->query = 0;
	s->done = 0;
	ctx.n = s;
	bpf_loop(SE_NORM_MAX, normalize_byte, &ctx, 0);
	if (s->done == NORM_TOO_DEEP)
		return NORM_UNREAD;
	if (s->done != NORM_DONE && !s->query)
		return len > SE_NORM_MAX ? NORM_UNREAD : NORM_INCOMPLETE; /* the path did not end in what was read */
	n = s->out_len < SE_PATH_MAX ? s->out_len : SE_PATH_MAX;
	for (int i = 0; i < SE_PATH_MAX / 8; i++) {
		__u64 w = 0;

		__builtin_memcpy(&w, &s->out[i * 8], 8);
		path[i] = n >= i * 8 + 8 ? w : n <= i * 8 ? 0 : w & ((1ULL << ((n - i * 8) * 8)) - 1);
	}
	return n;
}

/*
 * Whether the first `plen` bytes of a target (SE_PATH_MAX: it goes on) may read differently once
 * normalised: a '%', or a '/' followed by '.' or '/'. False positives only cost a normalisation.
 */
static __always_inline bool needs_normalizing(const __u64 *path, __u32 plen)
{
	__u64 carry = 0, any = 0;

	if (plen >= SE_PATH_MAX)
		return true; /* what follows is not read here: ".." there could reach back */
	for (int i = 0; i < SE_PATH_MAX / 8; i++) {
		__u64 w = path[i], s = bytes_equal_to(w, '/');
		__u64 keep = plen >= i * 8 + 8 ? ~0ULL : plen <= i * 8 ? 0 : (1ULL << ((plen - i * 8) * 8)) - 1;

		any |= (bytes_equal_to(w, '%') | (((s << 8) | carry) & (s | bytes_equal_to(w, '.')))) & keep;
		carry = s >> 56;
	}
	return any != 0;
}

#endif /* SENTINEL_NORMALIZE_BPF_H */

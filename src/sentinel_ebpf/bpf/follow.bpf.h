/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Following a client's HTTP/1 byte stream by its framing, so that the data plane knows where each request
 * starts: after the previous request's head (its empty line) and body (Content-Length bytes, or chunks
 * followed to the last one and its trailers). The caller judges the request at a segment's first new
 * byte, then those that start inside the segment (pipelined behind another, or after a body) one by one,
 * each where it starts, up to SE_PIPELINED_MAX of them; it cuts the segment before a request it cannot
 * judge there (its request line goes on past the segment, it is refused, too many came before it), so
 * that the client's TCP sends it again at the start of a segment. A line the follower must read whole (a
 * Content-Length or Transfer-Encoding header, a chunk size, a header whose name is not read yet) is never
 * guessed across segments: its bytes so far are carried to the next segment (FOLLOW_CARRY). Framing a
 * server cannot read either (an invalid Content-Length, two different ones, a Transfer-Encoding other
 * than chunked last) resets the connection: servers answer such a request with 400 or 501 and close.
 */
#ifndef SENTINEL_FOLLOW_BPF_H
#define SENTINEL_FOLLOW_BPF_H

#include "parse.bpf.h"
#include "dataplane.bpf.h"

/* A character of a method as nginx reads one (servers differ on others: see docs/inbound.md). */
static __always_inline bool method_char(__u8 c)
{
	return (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
}

enum stream_phase {
	STREAM_REQUEST = 0,    /* a request starts here (the stream's first byte, or after a body) */
	STREAM_HEADERS = 1,    /* at a line of a request's head (IN_LINE: inside one, skipping to its end) */
	STREAM_BODY = 2,       /* `left` bytes of a Content-Length body, then a request */
	STREAM_CHUNK_SIZE = 3, /* at a chunk-size line */
	STREAM_CHUNK_DATA = 4, /* `left` bytes of chunk data, then STREAM_CHUNK_END */
	STREAM_TRAILERS = 5,   /* at a trailer line after the last chunk, until an empty line */
	STREAM_OPAQUE = 6,     /* no longer HTTP/1 (HTTP/2 with prior knowledge): nothing more is judged */
	STREAM_CHUNK_END = 7,  /* the line end after a chunk's data: CRLF or a bare LF (nginx takes both) */
};

#define STREAM_IN_LINE 1       /* inside a line of the phase's kind, skipping to its LF */
#define STREAM_CHUNKED 2       /* the head being read said Transfer-Encoding: chunked */
#define STREAM_HAVE_LENGTH 4   /* ... Content-Length (`left` holds it while the head is read) */

#define STREAM_REQ_LINE 8      /* the line being skipped (IN_LINE) is the request line */

#define LAST_CLOSE 1           /* the request asked to close: Connection: close, or HTTP/1.0 */
#define LAST_EXPECT 2          /* the request said Expect: 100-continue (its body waits for the answer) */

#define FOLLOW_RESET 0xfffffffeU      /* framing no server reads: reset the connection */

#define FOLLOW_STEPS 64                /* lines or skips per call (more: the segment is cut there) */

/* stream_follow()'s `how`: how many requests may start inside the segment (after the first new byte)
 * before the follower stops at one (the caller cuts there), and whether the call goes on with a segment
 * an earlier call followed part of (a request starting at `from` then is not the segment's first). */
#define FOLLOW_MAX_REQS(how) ((how) & 0x7f)
#define FOLLOW_GOES_ON 0x80
#define FOLLOW_HOW(how, until) ((__u32)(how) << 24 | ((until) & 0xffffff)) /* (until: a payload offset) */

/* bpf_loop's context (on the caller's stack). */
struct follow_ctx {
	struct __sk_buff *skb;
	struct stream_pos *st;
	struct follow_buf *b;
	__u32 off;                 /* the payload's offset in the skb */
	__u32 len;                 /* payload bytes */
	__u32 from;                /* the segment's first new byte (payload offset) */
	__u32 at;                  /* where the follower is (payload offset) */
	__u32 how;                 /* FOLLOW_* of stream_follow() */
	__u32 until;               /* a request that starts here or after stops the follower */
	__u32 started;             /* requests started after `from` */
	__u32 ret;                 /* the answer, once stopped */
	__u32 stopped;
};

#define FOLLOW_NO_LF FOLLOW_BUF

static __always_inline __u8 follow_byte(const struct follow_buf *b, __u32 j)
{
	asm volatile("" : "+r"(j));
	return b->c[j & (FOLLOW_BUF - 1)];
}

/*
 * Index of the first LF among the wlen bytes read, or FOLLOW_NO_LF. This and the other readers below are
 * global functions: the verifier checks each once, and their answers do not multiply its paths.
 */
__noinline __u32 find_lf(const struct follow_buf *b, __u32 wlen)
{
	if (!b)
		return FOLLOW_NO_LF;
	for (__u32 k = 0; k < (FOLLOW_WINDOW + FOLLOW_CARRY) / 8; k++) {
		__u64 m;

		if (k * 8 >= wlen)
			break;
		m = bytes_equal_to(b->w[k], '\n');
		if (wlen - k * 8 < 8)
			m &= (1ULL << ((wlen - k * 8) * 8)) - 1;
		if (m)
			return k * 8 + lowest_flagged_byte(m);
	}
	return FOLLOW_NO_LF;
}

#define LOWER8(w) ((w) | 0x2020202020202020ULL)
#define FW8(a, b, c, d, e, f, g, h)                                                                         \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | (__u64)(e) << 32 |             \
	 (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)

enum header_name {
	HDR_OTHER = 0,
	HDR_CONTENT_LENGTH = 1,    /* "content-length:" (15 bytes) */
	HDR_TRANSFER_ENCODING = 2, /* "transfer-encoding:" (18 bytes) */
	HDR_CONNECTION = 3,        /* "connection:" (11 bytes) */
	HDR_EXPECT = 4,            /* "expect:" (7 bytes) */
};

/* Which header a line of `n` bytes read starts with (case-insensitive). */
static __always_inline int header_name(const struct follow_buf *b, __u32 n)
{
	__u64 w0 = LOWER8(b->w[0]), w1 = LOWER8(b->w[1]), w2 = LOWER8(b->w[2]);

	if (n >= 15 && w0 == FW8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
	    (w1 & 0x00ffffffffffffffULL) == FW8('l', 'e', 'n', 'g', 't', 'h', ':', 0))
		return HDR_CONTENT_LENGTH;
	if (n >= 18 && w0 == FW8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r') && w1 == FW8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n') &&
	    (w2 & 0xffff) == FW8('g', ':', 0, 0, 0, 0, 0, 0))
		return HDR_TRANSFER_ENCODING;
	if (n >= 11 && w0 == FW8('c', 'o', 'n', 'n', 'e', 'c', 't', 'i') &&
	    (w1 & 0xffffff) == FW8('o', 'n', ':', 0, 0, 0, 0, 0))
		return HDR_CONNECTION;
	if (n >= 7 && (w0 & 0x00ffffffffffffffULL) == FW8('e', 'x', 'p', 'e', 'c', 't', ':', 0))
		return HDR_EXPECT;
	return HDR_OTHER;
}

static __always_inline bool ows(__u8 c)
{
	return c == ' ' || c == '\t';
}

#define CL_LINE_MAX 64             /* a Content-Length line longer than this is not read (reset) */

struct number_ctx {
	const struct follow_buf *b;
	__u32 lf;                  /* the line's LF */
	__u32 digits;
	__u32 after;               /* blanks after the digits */
	__u32 bad;
	__s64 v;
};

/* One byte of a Content-Length value (a bpf_loop callback from the value's start: verified once). */
static long decimal_byte(__u32 i, struct number_ctx *n)
{
	__u32 k = 15 + i;
	__u8 c;

	if (k >= n->lf)
		return 1;
	c = follow_byte(n->b, k);
	if (c >= '0' && c <= '9') {
		if (n->after || n->digits >= 18) {
			n->bad = 1;
			return 1;
		}
		n->v = n->v * 10 + (c - '0');
		n->digits++;
	} else if (ows(c) || (c == '\r' && k + 1 == n->lf)) {
		if (n->digits)
			n->after = 1;
	} else {
		n->bad = 1;
		return 1;
	}
	return 0;
}

/* The value of a Content-Length line ending (LF) at `lf`, or -1 when it is not a decimal number. */
__noinline __s64 content_length(const struct follow_buf *b, __u32 lf)
{
	struct number_ctx n = { .b = b, .lf = lf };

	if (!b || lf > CL_LINE_MAX)
		return -1;
	bpf_loop(CL_LINE_MAX - 15, decimal_byte, &n, 0);
	return n.digits && !n.bad ? n.v : -1;
}

/* Where the content of a line ending (LF) at `lf` ends: before its CR, if it has one. */
static __always_inline __u32 content_end(const struct follow_buf *b, __u32 lf)
{
	return lf && follow_byte(b, lf - 1) == '\r' ? lf - 1 : lf;
}

/* The `n` (at most 8) bytes before `end`, as a little-endian word. */
static __always_inline __u64 word_before(const struct follow_buf *b, __u32 end, __u32 n)
{
	__u64 word = 0;

	for (__u32 k = 0; k < 8; k++) {
		if (k < n)
			word |= (__u64)follow_byte(b, end - n + k) << (8 * k);
	}
	return word;
}

/* A Transfer-Encoding line ending at `lf` names chunked last (the only framing servers read). */
__noinline int chunked_last(const struct follow_buf *b, __u32 lf)
{
	__u32 end;

	if (!b || lf >= FOLLOW_BUF)
		return 0;
	end = content_end(b, lf);
	for (int k = 0; k < 8; k++) {
		if (end > 18 && ows(follow_byte(b, end - 1)))
			end--;
	}
	if (end < 18 + 7)
		return false;
	if (LOWER8(word_before(b, end, 7)) != (FW8('c', 'h', 'u', 'n', 'k', 'e', 'd', 0) | 0x2000000000000000ULL))
		return false;
	__u8 before = follow_byte(b, end - 8);
	return end - 7 == 18 || ows(before) || before == ',';
}

/* The size of a chunk-size line (hex, then an extension or the line's end), or -1. */
__noinline __s64 chunk_size(const struct follow_buf *b, __u32 lf)
{
	__s64 v = 0;
	__u32 k;

	if (!b)
		return -1;
	for (k = 0; k < 15; k++) {
		__u8 c = follow_byte(b, k);
		int d;

		if (k >= lf)
			break;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			d = (c | 0x20) - 'a' + 10;
		else
			break;
		v = v << 4 | d;
	}
	if (k == 0)
		return -1;
	{
		__u8 c = follow_byte(b, k);

		if (c != ';' && c != '\r' && c != '\n' && !ows(c))
			return -1;
	}
	return v;
}

/* An Expect line ending at `lf` says 100-continue (any case, blanks around it). */
__noinline int expects_continue(const struct follow_buf *b, __u32 lf)
{
	__u32 k = 7, end;

	if (!b || lf >= FOLLOW_BUF)
		return 0;
	for (int i = 0; i < 8; i++) {
		if (k < lf && ows(follow_byte(b, k)))
			k++;
	}
	end = content_end(b, lf);
	for (int i = 0; i < 8; i++) {
		if (end > k && ows(follow_byte(b, end - 1)))
			end--;
	}
	if (end != k + 12 || follow_byte(b, k) != '1' || follow_byte(b, k + 1) != '0' ||
	    follow_byte(b, k + 2) != '0' || follow_byte(b, k + 3) != '-')
		return 0;
	return LOWER8(word_before(b, end, 8)) == FW8('c', 'o', 'n', 't', 'i', 'n', 'u', 'e');
}

/* A Connection line ending at `lf` names the token close (any case). */
__noinline int names_close(const struct follow_buf *b, __u32 lf)
{
	if (!b)
		return 0;
	for (__u32 k = 11; k + 5 <= 64; k++) {
		if (k + 5 > lf)
			break;
		if ((follow_byte(b, k) | 0x20) == 'c' && (follow_byte(b, k + 1) | 0x20) == 'l' &&
		    (follow_byte(b, k + 2) | 0x20) == 'o' && (follow_byte(b, k + 3) | 0x20) == 's' &&
		    (follow_byte(b, k + 4) | 0x20) == 'e')
			return 1;
	}
	return 0;
}

/* A request line ending at `lf` (in the bytes read) says HTTP/1.0. */
__noinline int http10_line(const struct follow_buf *b, __u32 lf)
{
	__u32 end;

	if (!b || lf >= FOLLOW_BUF)
		return 0;
	end = content_end(b, lf);
	return end >= 8 && word_before(b, end, 8) == FW8('H', 'T', 'T', 'P', '/', '1', '.', '0');
}

/* How many of the first wlen bytes read are CR or LF (at most 16: http_route reads no further). */
__noinline __u32 line_ends(const struct follow_buf *b, __u32 wlen)
{
	__u32 k;

	if (!b)
		return 0;
	for (k = 0; k < 16; k++) {
		__u8 ch = follow_byte(b, k);

		if (k >= wlen || (ch != '\r' && ch != '\n'))
			break;
	}
	return k;
}

static __always_inline long follow_stop(struct follow_ctx *c, __u32 ret)
{
	c->ret = ret;
	c->stopped = 1;
	return 1;
}

/*
 * A line that must be read whole goes on past the segment: its `wlen` bytes so far (`k` of them carried
 * already) are carried to the next segment, and this one is followed to its end.
 */
static __always_inline long carry_line(struct follow_ctx *c, struct stream_pos *st, const struct follow_buf *b,
				       __u32 wlen, __u32 k)
{
	if (wlen > FOLLOW_CARRY)
		return follow_stop(c, FOLLOW_RESET);
	__builtin_memcpy(st->carry, b->c, FOLLOW_CARRY);
	st->carry_len = wlen;
	c->at += wlen - k;
	return 0;
}

/* One line or one skip of the stream. */
static __always_inline long follow_one(struct follow_ctx *c)
{
	struct stream_pos *st = c->st;
	struct follow_buf *b = c->b;
	__u32 rest, wlen, lf, at = c->at, k, n;
	__u8 phase;

	if (at >= c->len)
		return follow_stop(c, c->len);
	rest = c->len - at;
	phase = st->phase;
	if (phase == STREAM_OPAQUE)
		return follow_stop(c, c->len);
	if (phase == STREAM_BODY || phase == STREAM_CHUNK_DATA) {
		__u64 n = st->left < rest ? st->left : rest;

		c->at = at + n;
		st->left -= n;
		if (!st->left)
			st->phase = phase == STREAM_BODY ? STREAM_REQUEST : STREAM_CHUNK_END;
		return 0;
	}
	if (phase == STREAM_REQUEST && at > c->from && (c->started >= FOLLOW_MAX_REQS(c->how) || at >= c->until))
		return follow_stop(c, at); /* a request inside the segment: stop before it */
	/* the window, after the bytes carried of the line it goes on with (k) */
	k = phase == STREAM_REQUEST || (st->flags & STREAM_IN_LINE) ? 0 : st->carry_len;
	if (k > FOLLOW_CARRY)
		k = FOLLOW_CARRY;
	if (k)
		__builtin_memcpy(b->c, st->carry, FOLLOW_CARRY);
	n = rest < FOLLOW_WINDOW ? rest : FOLLOW_WINDOW;
	n = ((n - 1) & (FOLLOW_WINDOW - 1)) + 1;
	/* (k is at most FOLLOW_CARRY; masked after a barrier, so that kernels that lose a spilled value's
	 * bounds, 6.1, see it bounded where it is used) */
	asm volatile("" : "+r"(k));
	if (bpf_skb_load_bytes(c->skb, c->off + at, b->c + (k & (2 * FOLLOW_CARRY - 1)), n))
		return follow_stop(c, c->len);
	wlen = k + n;
	st->carry_len = 0;
	if (phase == STREAM_REQUEST) {
		/* the segment's first request (the caller judges it): past empty lines to the request line */
		k = line_ends(b, wlen);

		if (k >= wlen)
			return follow_stop(c, c->len); /* only line ends: the request starts in a later segment */
		if (!method_char(follow_byte(b, k))) /* ("_X" and "-X" are methods nginx serves) */
			return follow_stop(c, c->len); /* not a request line: not HTTP/1 we read, passed */
		if (k + 8 <= wlen && follow_byte(b, k) == 'P' && follow_byte(b, k + 1) == 'R' &&
		    follow_byte(b, k + 2) == 'I' && follow_byte(b, k + 3) == ' ' && follow_byte(b, k + 4) == '*') {
			st->phase = STREAM_OPAQUE; /* HTTP/2 with prior knowledge */
			return follow_stop(c, c->len);
		}
		if (at > c->from)
			c->started++;
		st->phase = STREAM_HEADERS;
		st->flags = STREAM_IN_LINE | STREAM_REQ_LINE; /* the request line, to its end */
		st->left = 0;
		st->reqs++;
		st->last = 0;
		c->at = at + k;
		return 0;
	}
	lf = find_lf(b, wlen);
	if (st->flags & STREAM_IN_LINE) {
		if (lf == FOLLOW_NO_LF) {
			c->at = at + n;
			return 0;
		}
		c->at = at + lf + 1;
		if ((st->flags & STREAM_REQ_LINE) && http10_line(b, lf))
			st->last |= LAST_CLOSE;
		st->flags &= ~(STREAM_IN_LINE | STREAM_REQ_LINE);
		return 0;
	}
	if (phase == STREAM_CHUNK_END) {
		/* nothing but CRLF or LF: a server answers anything else with 400 and closes */
		if (lf == FOLLOW_NO_LF)
			return wlen == 1 && follow_byte(b, 0) == '\r' ? carry_line(c, st, b, wlen, k) :
									 follow_stop(c, FOLLOW_RESET);
		if (lf > 1 || (lf == 1 && follow_byte(b, 0) != '\r'))
			return follow_stop(c, FOLLOW_RESET);
		c->at = at + lf + 1 - k;
		st->phase = STREAM_CHUNK_SIZE;
		return 0;
	}
	if (phase == STREAM_CHUNK_SIZE) {
		__s64 size;

		if (lf == FOLLOW_NO_LF)
			return carry_line(c, st, b, wlen, k);
		size = chunk_size(b, lf);
		if (size < 0)
			return follow_stop(c, FOLLOW_RESET);
		c->at = at + lf + 1 - k;
		if (size == 0) {
			st->phase = STREAM_TRAILERS;
		} else {
			st->phase = STREAM_CHUNK_DATA;
			st->left = size; /* the data; its line end is read as a line (STREAM_CHUNK_END) */
		}
		return 0;
	}
	/* STREAM_HEADERS or STREAM_TRAILERS, at a line's start */
	if (lf == FOLLOW_NO_LF) {
		/* the line goes on past the segment or the window: skip it unless it must be read (its name
		 * not known yet, or a Content-Length or Transfer-Encoding) */
		int name = header_name(b, wlen);

		if (wlen < 18 || (phase == STREAM_HEADERS && (name == HDR_CONTENT_LENGTH ||
							       name == HDR_TRANSFER_ENCODING)))
			return carry_line(c, st, b, wlen, k);
		st->flags |= STREAM_IN_LINE;
		c->at = at + n;
		return 0;
	}
	c->at = at + lf + 1 - k;
	if (lf == 0 || (lf == 1 && follow_byte(b, 0) == '\r')) {
		/* the empty line: the head (or the trailers) ends */
		if (phase == STREAM_HEADERS && (st->flags & STREAM_CHUNKED)) {
			st->phase = STREAM_CHUNK_SIZE;
		} else if (phase == STREAM_HEADERS && (st->flags & STREAM_HAVE_LENGTH) && st->left) {
			st->phase = STREAM_BODY;
		} else {
			st->phase = STREAM_REQUEST;
			st->left = 0;
		}
		st->flags = 0;
		return 0;
	}
	if (phase != STREAM_HEADERS || lf < 11)
		return 0;
	{
		int name = header_name(b, lf);

		if (name == HDR_CONTENT_LENGTH) {
			__s64 v = content_length(b, lf);

			if (v < 0 || ((st->flags & STREAM_HAVE_LENGTH) && st->left != (__u64)v))
				return follow_stop(c, FOLLOW_RESET);
			st->left = v;
			st->flags |= STREAM_HAVE_LENGTH;
		} else if (name == HDR_TRANSFER_ENCODING) {
			if (!chunked_last(b, lf))
				return follow_stop(c, FOLLOW_RESET);
			st->flags |= STREAM_CHUNKED;
		} else if (name == HDR_CONNECTION && names_close(b, lf)) {
			st->last |= LAST_CLOSE;
		} else if (name == HDR_EXPECT && expects_continue(b, lf)) {
			st->last |= LAST_EXPECT;
		}
	}
	return 0;
}

/*
 * A request's head is hashed as the follower reads it (its request line and header lines, keyed by
 * head_hash_key: random for each load, so that a client cannot aim at a collision), so that a segment
 * that comes again before the stack took it (a duplicate queued behind the original; the original
 * dropped by the stack) is known to carry the requests that were judged (see stream_prepare). The heads
 * of the requests after the first in one segment are chained to it: the hash covers every head the
 * segment starts. Steps read the same bytes the same way each time, so the same heads hash the same.
 */
const volatile __u64 head_hash_key = 0;

#define HEAD_HASH_MUL 0x9e3779b97f4a7c15ULL

/* `h` with the first `n` bytes read (b->c) mixed in. A global function, verified once; its loop has no
 * branch but its bound (kernels before 6.2 do not prune a loop's paths well). */
__noinline __u64 head_hash(const struct follow_buf *b, __u64 h, __u32 n)
{
	__u32 words, rem;

	if (!b || n > FOLLOW_WINDOW)
		return h;
	words = n / 8;
	for (__u32 j = 0; j < FOLLOW_WINDOW / 8; j++) {
		if (j >= words)
			break;
		h = (h ^ b->w[j]) * HEAD_HASH_MUL;
		h ^= h >> 29;
	}
	rem = n % 8;
	if (rem)
		h = (h ^ (b->w[words & (FOLLOW_WINDOW / 8 - 1)] & ((1ULL << (rem * 8)) - 1))) * HEAD_HASH_MUL;
	return (h ^ n) * HEAD_HASH_MUL;
}

/* One line or one skip of the stream (a bpf_loop callback: verified once); a head's bytes are hashed. */
static long follow_step(__u32 i, struct follow_ctx *c)
{
	struct stream_pos *st = c->st;
	__u32 at = c->at, k = st->carry_len;
	__u8 phase = st->phase, in_line = st->flags & STREAM_IN_LINE;
	long r = follow_one(c);

	if (phase == STREAM_REQUEST && st->phase == STREAM_HEADERS) {
		/* a request starts: its head from its request line (after another in the segment: chained) */
		st->hash = at > c->from || (c->how & FOLLOW_GOES_ON) ? (st->hash ^ head_hash_key) * HEAD_HASH_MUL :
									head_hash_key;
	} else if (phase == STREAM_HEADERS && c->at > at) {
		/* (bytes read after a line's start carried from an earlier segment are counted, not hashed:
		 * never in the segment a request starts in, the one compared) */
		if (in_line || !k)
			st->hash = head_hash(c->b, st->hash, c->at - at);
		else
			st->hash = (st->hash ^ (c->at - at)) * HEAD_HASH_MUL;
	}
	return r;
}

/*
 * Follow the segment's payload from byte `from` (its first new byte, or where an earlier call stopped:
 * FOLLOW_GOES_ON) with the stream's state there in *st; on return *st is the state where the follower
 * stopped. Returns the payload length (the whole segment followed), a payload offset at which a request
 * starts (`from` < offset) after FOLLOW_MAX_REQS(how) others started in the segment or at or after
 * `until` (how_until: FOLLOW_HOW(how, until)): the caller judges it there or cuts the segment before it;
 * or FOLLOW_RESET. A global function: the verifier checks it once.
 */
__noinline __u32 stream_follow(struct __sk_buff *skb, const struct pkt *p, __u32 from, struct stream_pos *st,
			       __u32 how_until)
{
	__u32 zero = 0;
	struct follow_buf *b = bpf_map_lookup_elem(&follow_buf, &zero);
	struct follow_ctx c = {};

	if (!skb || !p || !st || !b)
		return FOLLOW_RESET;
	if (from >= p->payload_len)
		return p->payload_len;
	c.len = p->payload_len;
	c.until = how_until & 0xffffff;
	c.skb = skb;
	c.st = st;
	c.b = b;
	c.off = p->payload_off;
	c.from = from;
	c.at = from;
	c.how = how_until >> 24;
	bpf_loop(FOLLOW_STEPS, follow_step, &c, 0);
	if (!c.stopped)
		return c.at < c.len ? c.at : c.len; /* steps used up: cut where the follower stands */
	return c.ret;
}

#endif /* SENTINEL_FOLLOW_BPF_H */

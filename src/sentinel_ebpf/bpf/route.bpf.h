/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * HTTP on the wire: a request line's method, a response's status line, and the route of a request (its
 * target read, normalised when it must be, and looked up by longest path prefix: http_route).
 * Part of inbound.bpf.c (one BPF object): included there after the maps and scratch it uses, not on its
 * own.
 */
#ifndef SENTINEL_ROUTE_BPF_H
#define SENTINEL_ROUTE_BPF_H

/* Four or eight bytes of text as the little-endian word a load from a packet gives. */
#define W4(a, b, c, d) ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24)
#define W8(a, b, c, d, e, f, g, h) (W4(a, b, c, d) | W4(e, f, g, h) << 32)
#define LOW_BYTES(n) ((n) >= 8 ? ~0ULL : (1ULL << ((n) * 8)) - 1)

/*
 * Method at the start of a request line, from its first 8 bytes as a little-endian word; *len covers the
 * method and its space.
 */
static __always_inline __u8 parse_method(__u64 w, __u32 *len)
{
	__u64 w4 = w & LOW_BYTES(4), w5 = w & LOW_BYTES(5), w6 = w & LOW_BYTES(6), w7 = w & LOW_BYTES(7);

	if (w4 == W4('G', 'E', 'T', ' ')) { *len = 4; return HTTP_GET; }
	if (w5 == W8('P', 'O', 'S', 'T', ' ', 0, 0, 0)) { *len = 5; return HTTP_POST; }
	if (w4 == W4('P', 'U', 'T', ' ')) { *len = 4; return HTTP_PUT; }
	if (w5 == W8('H', 'E', 'A', 'D', ' ', 0, 0, 0)) { *len = 5; return HTTP_HEAD; }
	if (w7 == W8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0)) { *len = 7; return HTTP_DELETE; }
	if (w6 == W8('P', 'A', 'T', 'C', 'H', ' ', 0, 0)) { *len = 6; return HTTP_PATCH; }
	if (w == W8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ')) { *len = 8; return HTTP_OPTIONS; }
	if (w == W8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ')) { *len = 8; return HTTP_CONNECT; }
	if (w6 == W8('T', 'R', 'A', 'C', 'E', ' ', 0, 0)) { *len = 6; return HTTP_TRACE; }
	return HTTP_METHOD_NONE; /* another method (PURGE, PROPFIND): see http_route() */
}

#define STATUS_INTERIM 1

/*
 * The status line `off` bytes into the payload: its status class digit ('1' to '5', '1' only for 101) for
 * "HTTP/1.", STATUS_INTERIM for an interim 1xx response other than 101 (its final response follows), 0
 * when none starts there.
 */
static __always_inline __u8 status_at(struct __sk_buff *skb, const struct pkt *p, __u32 off)
{
	__u8 buf[12];

	if (off > p->payload_len || p->payload_len - off < sizeof(buf) ||
	    bpf_skb_load_bytes(skb, p->payload_off + off, buf, sizeof(buf)))
		return 0;
	if (*(__u32 *)buf != W4('H', 'T', 'T', 'P') || buf[4] != '/' || buf[5] != '1' || buf[6] != '.')
		return 0;
	if (buf[9] == '1' && !(buf[10] == '0' && buf[11] == '1'))
		return STATUS_INTERIM; /* (100 Continue, 103 Early Hints) */
	return buf[9];
}

/* A final response's status line at the start of the payload, with its status class digit in *hundreds. */
static __always_inline bool status_line(struct __sk_buff *skb, const struct pkt *p, __u8 *hundreds)
{
	__u8 c = status_at(skb, p, 0);

	*hundreds = c;
	return c > STATUS_INTERIM;
}

/*
 * The method of a request line from its first 8 bytes: enum http_method | the length of the method and
 * its space << 8. A global function: the caller gets one unknown value, not one verifier state per method.
 */
__noinline __u32 request_method(__u64 head)
{
	__u32 mlen = 0;
	__u8 method = parse_method(head, &mlen);

	return method | mlen << 8;
}

/*
 * The resource of the longest route for q's method and port that is a prefix of q's path (`plen` bytes
 * long), or 0: a binary search on the route lengths in `lens` (see struct route_lens), one hash lookup
 * per probe. A global function: verified once, whatever path led to it.
 */
__noinline __u32 route_search(const struct http_route_key *q, __u32 plen, const struct route_lens *lens)
{
	struct http_route_key key __attribute__((aligned(8))) = {};
	const __u64 *path;
	__u64 *kw = (__u64 *)key.path;
	__u32 best = 0, lo = 0, hi;

	if (!q || !lens)
		return 0;
	path = (const __u64 *)q->path;
	key.gen = q->gen;
	key.port = q->port;
	key.method = q->method;
	hi = lens->n;
	for (int step = 0; step < SE_ROUTE_PROBES; step++) {
		__u32 mid, rlen;
		__u32 *v;

		if (lo >= hi)
			break;
		mid = (lo + hi) / 2;
		if (mid >= SE_ROUTE_LENS_MAX)
			break;
		rlen = lens->len[mid];
		if (rlen > plen) {
			hi = mid;
			continue;
		}
		key.prefixlen = 32 + rlen * 8;
		for (int i = 0; i < SE_PATH_MAX / 8; i++)
			kw[i] = rlen >= i * 8 + 8 ? path[i] : rlen <= i * 8 ? 0 : path[i] & LOW_BYTES(rlen - i * 8);
		v = bpf_map_lookup_elem(&http_routes, &key);
		if (v) {
			best = *v; /* a route, or a marker's best route so far */
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return best;
}

/* http_route()'s answer when the request line does not end in this segment: do not guess, see it whole. */
#define ROUTE_INCOMPLETE 0xffffffffU
/* ... when the target's path cannot be normalised whole (NORM_UNREAD): what a server matches is unknown. */
#define ROUTE_UNREAD 0xfffffffeU
/* CR/LF bytes before a request line (servers skip them) and spaces after the method looked past. */
#define SE_LEAD_MAX 16
/* The longest method read (three leading() runs, less one: a run that fills all three may go on). */
#define SE_METHOD_MAX (3 * SE_LEAD_MAX - 1)
/* The longest scheme of an absolute-form target read (scheme_length). */
#define SE_SCHEME_MAX 32
#define SCHEME_MORE 0xffffffffU
#define SCHEME_LONG 0xfffffffeU

/* Up to SE_PATH_MAX bytes at `off` (of `len` left in the segment) into `path`; how many, 0 on error. */
static __always_inline __u32 load_path(struct __sk_buff *skb, __u32 off, __u32 len, __u64 *path)
{
	__u32 n = len < SE_PATH_MAX ? len : SE_PATH_MAX;

	if (n == 0)
		return 0;
	n = ((n - 1) & (SE_PATH_MAX - 1)) + 1; /* same value; a range [1, SE_PATH_MAX] the verifier can see */
	return bpf_skb_load_bytes(skb, off, path, n) ? 0 : n;
}

/* leading()'s `a` for "characters of a method" (method_char). */
#define LEAD_METHOD_CHARS 0x100

/*
 * How many bytes at `off` (of `len` left) are `a` or `b` (or method characters), at most SE_LEAD_MAX.
 * A global function: the caller gets one unknown count, not one verifier state per possible count.
 */
__noinline __u32 leading(struct __sk_buff *skb, __u32 off, __u32 len, __u32 a, __u32 b)
{
	__u8 buf[SE_LEAD_MAX] = {};
	__u32 i, n = len < SE_LEAD_MAX ? len : SE_LEAD_MAX;

	if (!skb || n == 0)
		return 0;
	n = ((n - 1) & (SE_LEAD_MAX - 1)) + 1;
	if (bpf_skb_load_bytes(skb, off, buf, n))
		return 0;
	for (i = 0; i < SE_LEAD_MAX; i++) {
		if (i >= n)
			break;
		if (a == LEAD_METHOD_CHARS ? !method_char(buf[i]) : buf[i] != a && buf[i] != b)
			break;
	}
	return i;
}

/*
 * Where the path of an absolute-form target starts ("http://host/path": the offset of "/path" from `off`),
 * ABS_ROOT when the target has no path (then it is "/"), or ABS_UNKNOWN when the authority does not end
 * within what is read. `start`: the length of the scheme and its "://". A global function, like leading().
 */
#define ABS_ROOT 0xfffffffeU
#define ABS_UNKNOWN 0xffffffffU
__noinline __u32 absolute_path_at(struct __sk_buff *skb, __u32 off, __u32 len, __u32 start)
{
	__u64 path[SE_PATH_MAX / 8] = {};
	__u32 n = load_path(skb, off, len, path);

	if (!n || start > SE_SCHEME_MAX + 3)
		return ABS_UNKNOWN;
	for (int i = 0; i < SE_PATH_MAX / 8; i++) {
		__u64 w = path[i], slash, end;
		__u32 base = i * 8, at;

		if (base >= n)
			break;
		if (base + 8 <= start)
			continue; /* the scheme */
		if (base < start) /* the scheme's bytes in this word read as 'A's, which end nothing */
			w = (w & ~LOW_BYTES(start - base)) | (0x4141414141414141ULL & LOW_BYTES(start - base));
		slash = bytes_equal_to(w, '/');
		end = bytes_equal_to(w, ' ') | bytes_equal_to(w, '\r') | bytes_equal_to(w, '?');
		if (!(slash | end))
			continue;
		at = base + lowest_flagged_byte(slash | end);
		if (at >= n)
			break;
		return slash && lowest_flagged_byte(slash) == lowest_flagged_byte(slash | end) ? at : ABS_ROOT;
	}
	return ABS_UNKNOWN;
}

/*
 * An absolute-form target's scheme as nginx reads one (a letter, then letters, digits, '+', '-' or '.')
 * and its "://" from the first `n` bytes of the target in `pw`: their length, 0 when the target is not
 * one, SCHEME_MORE when the `n` bytes end inside what could still be one, SCHEME_LONG past SE_SCHEME_MAX
 * characters. A global function: verified once.
 */
__noinline __u32 scheme_length(const struct path_words *pw, __u32 n)
{
	const __u8 *b;
	__u32 i;

	if (!pw)
		return 0;
	b = (const __u8 *)pw->w;
	for (i = 0; i < SE_SCHEME_MAX; i++) {
		__u8 c = b[i], l = c | 0x20;

		if (i >= n)
			return SCHEME_MORE;
		if (c == ':')
			break;
		if (!((l >= 'a' && l <= 'z') || (i && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'))))
			return 0;
	}
	if (i >= SE_SCHEME_MAX)
		return SCHEME_LONG;
	if (i == 0)
		return 0;
	if (i + 1 >= n)
		return SCHEME_MORE;
	if (b[i + 1] != '/')
		return 0;
	if (i + 2 >= n)
		return SCHEME_MORE;
	return b[i + 2] == '/' ? i + 3 : 0;
}

/* Lower-case ASCII letters of a little-endian word of text (other bytes may change: compare letters only). */
#define LOWER_WORD(w) ((w) | 0x2020202020202020ULL)

/*
 * The resource an HTTP request is for, 0 (not a request line, no route: counted per port),
 * ROUTE_INCOMPLETE or ROUTE_UNREAD. The request line starts `skip` bytes into the payload (port_skip =
 * skip << 16 | port, the port in host order for the counters), after any empty lines; the method is read
 * as one word; spaces after it are skipped; an absolute-form target (http://host/path) is reduced to its
 * path; the path goes straight into the route key; the longest route that is a prefix of it is found by
 * binary search on the route lengths in `lens` (see struct route_lens). HEAD falls back to GET when no
 * route names HEAD. The key's gen and port fields come as gen << 16 | port. A global function: the
 * verifier checks it once.
 */
__noinline __u32 http_route(struct __sk_buff *skb, const struct pkt *p, __u32 port_skip, __u32 key_gen_port,
			    const struct route_lens *lens)
{
	struct http_route_key q __attribute__((aligned(8))) = {};
	struct path_words pw = {};
	__u64 *path = pw.w, head = 0;
	__u32 port = port_skip & 0xffff, skip = port_skip >> 16;
	__u32 n, off, len, lead, mlen, plen = SE_PATH_MAX, best;
	__u8 method;

	if (!skb || !p || !lens || skip >= p->payload_len)
		return 0;
	off = p->payload_off + skip;
	len = p->payload_len - skip;
	/* empty lines before the request line */
	lead = leading(skb, off, len, '\r', '\n');
	if (lead == len)
		return 0; /* only line ends: the request starts in a later segment, at its first byte */
	if (lead >= SE_LEAD_MAX)
		goto incomplete;
	off += lead;
	len -= lead;
	if (len < 8)
		goto short_line;
	if (bpf_skb_load_bytes(skb, off, &head, 8))
		return 0;
	if (!lead && (head & 0xffff) == 0x0316) {
		port_count(port, PORT_TLS);
		return 0;
	}
	if (!lead && head == W8('P', 'R', 'I', ' ', '*', ' ', 'H', 'T')) {
		/* HTTP/2 with prior knowledge (a server without it answers 400 and closes); "PRI /x" is an
		 * HTTP/1 request with another method, served as one */
		port_count(port, PORT_HTTP2);
		return 0;
	}
	mlen = request_method(head);
	method = mlen & 0xff;
	mlen = (mlen >> 8) & 0xf;
	if (method == HTTP_METHOD_NONE) {
		/* another method (PURGE, PROPFIND, BASELINE-CONTROL) and its space: nginx takes any length; up
		 * to SE_METHOD_MAX characters are read, a longer one is not read (reset) */
		__u32 run = leading(skb, off, len, LEAD_METHOD_CHARS, 0);
		__u8 sp = 0;

		if (run == SE_LEAD_MAX && len > run)
			run += leading(skb, off + run, len - run, LEAD_METHOD_CHARS, 0);
		if (run == 2 * SE_LEAD_MAX && len > run)
			run += leading(skb, off + run, len - run, LEAD_METHOD_CHARS, 0);
		if (run == 0)
			goto not_request_line;
		if (run >= len)
			goto incomplete; /* the method goes on in a later segment */
		if (run > SE_METHOD_MAX) {
			port_count(port, PORT_TARGET_UNREAD);
			return ROUTE_UNREAD;
		}
		if (bpf_skb_load_bytes(skb, off + run, &sp, 1) || sp != ' ')
			goto not_request_line;
		method = HTTP_OTHER;
		mlen = run + 1;
	}
	if (!mlen || mlen > SE_METHOD_MAX + 1)
		goto not_request_line;
	off += mlen;
	len -= mlen;
	/* more spaces after the method's one */
	lead = leading(skb, off, len, ' ', ' ');
	if (lead >= SE_LEAD_MAX || lead >= len)
		goto incomplete;
	off += lead;
	len -= lead;
	n = load_path(skb, off, len, path);
	if (!n)
		goto incomplete;
	if ((path[0] & 0xff) != '/') {
		/* absolute-form: scheme://authority/path, or scheme://authority alone (the path is "/"); nginx
		 * serves the path whatever the scheme (ftp://host/api is /api) */
		__u32 start = scheme_length(&pw, n), at;

		if (start == SCHEME_MORE)
			goto incomplete; /* the target goes on in a later segment */
		if (start == SCHEME_LONG) {
			port_count(port, PORT_TARGET_UNREAD);
			return ROUTE_UNREAD;
		}
		if (!start)
			goto not_request_line;
		at = absolute_path_at(skb, off, len, start);
		if (at == ABS_UNKNOWN)
			goto incomplete; /* the authority goes on past what is read: do not guess */
		if (at == ABS_ROOT) {
			__builtin_memset(&pw, 0, sizeof(pw));
			path[0] = W4('/', ' ', 0, 0); /* no path: the target is the server's root */
			n = 2;
			goto have_path;
		}
		if (at >= len)
			goto incomplete;
		off += at;
		len -= at;
		n = load_path(skb, off, len, path);
		if (!n)
			goto incomplete;
		goto have_path;
	}
have_path:
	for (int i = 0; i < SE_PATH_MAX / 8; i++) {
		__u64 end = bytes_equal_to(path[i], ' ') | bytes_equal_to(path[i], '\r') |
			    bytes_equal_to(path[i], '\n');

		if (end) {
			plen = i * 8 + lowest_flagged_byte(end);
			break;
		}
	}
	if (plen >= n && n < SE_PATH_MAX)
		goto incomplete; /* the request line goes on in a later segment */
	if (needs_normalizing(path, plen)) {
		n = normalize_target(skb, off, len, &pw);
		if (n == NORM_INCOMPLETE)
			goto incomplete;
		if (n == NORM_UNREAD) {
			port_count(port, PORT_TARGET_UNREAD);
			return ROUTE_UNREAD;
		}
		if (n)
			plen = n;
	}
	if (skb->gso_segs > 1)
		port_count(port, PORT_GSO); /* judged all the same; see tc_ingress */
	q.gen = key_gen_port >> 16;
	q.port = key_gen_port;
	q.method = method;
	__builtin_memcpy(q.path, pw.w, sizeof(q.path));
	best = route_search(&q, plen, lens);
	if (!best && method == HTTP_HEAD) {
		q.method = HTTP_GET; /* HEAD is a GET without the body, unless a resource names HEAD */
		best = route_search(&q, plen, lens);
	}
	if (!best)
		port_count(port, PORT_NO_ROUTE);
	return best;
short_line:
	/* fewer than 8 bytes: a request line's beginning ("GET /"), or something else */
	if (bpf_skb_load_bytes(skb, off, &head, 1) || !method_char(head & 0xff))
		goto not_request_line;
incomplete:
	port_count(port, PORT_INCOMPLETE);
	return ROUTE_INCOMPLETE;
not_request_line:
	port_count(port, PORT_NOT_REQUEST_LINE);
	return 0;
}

/* http_segment()'s answers besides a resource id (or 0: pass unjudged). */
#define SEGMENT_DROP 0xfffffffeU    /* drop it: the client sends it again */
#define SEGMENT_RESET 0xfffffffdU   /* reset the connection */
#define SEGMENT_ANSWER_AGAIN 0xfffffffcU /* the request last refused in the stream: send its reply again */
#define SEGMENT_SWALLOW 0xfffffffbU /* the rest of a refused request: acknowledge it, or answer where it ends */

#endif /* SENTINEL_ROUTE_BPF_H */

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The governance object's state in one place: every map of inbound.bpf.o, and the data-plane types their
 * values hold (the types the control plane reads or writes are the contract, in sentinel.h; its Python
 * map handles are generated from the object, see _maps.py). inbound.bpf.c includes this before its
 * headers by concern, which use the maps by name. Global variables (.rodata settings, .bss) stay beside
 * the code that reads them.
 */
#ifndef SENTINEL_DATAPLANE_BPF_H
#define SENTINEL_DATAPLANE_BPF_H

#include <bpf/bpf_helpers.h>
#include "sentinel.h"
#include "parse.bpf.h"

/* ---- Types ---------------------------------------------------------------------------------------- */

/* A line the framing depends on (Content-Length, Transfer-Encoding, a chunk size, a header's name) is
 * read whole: when a segment ends inside one, its bytes so far are carried to the next segment (the
 * segment goes on). Longer than this, such a line is not read (the connection is reset). */
#define FOLLOW_CARRY 64

/* The stream's state at client sequence number `seq` (see follow.bpf.h). */
struct stream_pos {
	__u64 left;
	__u64 hash;                /* the head of the request last started, so far (see head_hash) */
	__u32 seq;
	__u8 phase;
	__u8 flags;
	__u8 reqs;                 /* requests that started so far (modulo 256) */
	__u8 last;                 /* LAST_* of the last request whose head was read */
	__u32 valid;               /* 1: a state (0: none known, as for a new connection) */
	__u32 carry_len;           /* bytes of a line to read whole that began in an earlier segment */
	__u8 carry[FOLLOW_CARRY];  /* ... kept here (the segment itself went on to the server) */
};

/* The follower's read buffer (see follow.bpf.h). */
#define FOLLOW_WINDOW 256              /* bytes of the segment read at a time */
#define FOLLOW_BUF 512                 /* the read buffer: a carried line's start, then the window */

struct follow_buf {
	union {
		__u64 w[FOLLOW_BUF / 8];
		__u8 c[FOLLOW_BUF];
	};
};

/* A connection's sequence translation (see xlate.bpf.h). */
struct seq_xlate {
	__u32 c_pos;               /* client seq (client's numbering) right after the last request swallowed */
	__u32 c_before;            /* client bytes swallowed before that request */
	__u32 c_after;             /* ... including it */
	__u32 s_pos;               /* server seq (server's numbering) where the last reply was put in */
	__u32 s_before;            /* reply bytes put in before that reply */
	__u32 s_after;             /* ... including it */
	__u32 swallow;             /* the last refused request goes on past c_pos: its next bytes are
				    * acknowledged to the client and swallowed too, and its reply is put in
				    * where it ends (s_* still describe the reply before) */
};

/* A connection's client stream, as the `streams` map keeps it. */
struct stream_state {
	struct stream_pos prev;
	struct stream_pos cur;
	struct seq_xlate xl;        /* once a request was refused in the stream (xl_on): its translation */
	__u32 xl_on;
	__u32 requests;             /* requests passed to the server */
	__u32 responses;            /* final responses the server began (a status line starting a segment) */
	__u32 status_seq;           /* the server's seq of the last one counted (its retransmission is not) */
};

/* Per connection (socket-local storage, freed by the kernel with the socket). */
struct conn_state {
	__u32 incomplete_seq;       /* where the last segment dropped for an incomplete request line started */
	__u32 incomplete_tries;     /* how many times that segment was dropped */
};

/* The headers bpf_tcp_check_syncookie() reads (options are not needed: the cookie encodes the MSS). */
struct cookie_headers {
	union {
		struct iphdr v4;
		struct ipv6hdr v6;
	} ip;
	struct tcphdr th;
};

/* What syncookie_ack() and syn_for_this_host() hand the kernel (off the stack: tc_ingress's calls use
 * nearly all of it). */
union stream_scratch {
	struct cookie_headers cookie;
	struct bpf_fib_lookup fib;
};

/* A hotspot parameter value's state (see hotspot.bpf.h); updated with compare-and-swap as sentinel-golang
 * does (LRU maps cannot hold a bpf_spin_lock). */
struct hot_state {
	__s64 tokens;               /* QPS Reject: tokens left */
	__u64 last;                 /* QPS Reject: last refill (ms); Throttling: last pass (ns) */
	__s64 concurrency;          /* Concurrency: in flight with this value */
};

/* Scratch for finding a parameter: the request's first bytes and the search state. The state lives in
 * memory, not registers, so the verifier sees one state per loop iteration. */
struct param_scan {
	__u8 buf[SE_PARAM_PEEK];
	__u32 len;
	__u32 match;
	__u32 vstart;
	__u32 vend;
	__u32 found;
	__u32 ended;                /* the search reached the end of the request line (query) or head (header) */
	__u32 begun;                /* past the empty lines before the request line (servers skip them) */
	__u32 prev;
	__u32 prev2;
	__u32 pct;                  /* query names: 1 after '%', 2 after its first hex digit */
	__u32 pct_hi;
	__u32 hashed;               /* hash_value: bytes hashed */
	__u32 skip;                 /* hash_value: hex digits of an escape already hashed */
	__u64 hash;
};

/* Request targets normalised (see normalize.bpf.h). */
#define SE_NORM_MAX 1024    /* target bytes normalised; a path that goes on past them is not judged */
#define SE_NORM_DEPTH 128   /* path segments remembered for ".."; a deeper path is not judged */

struct norm_scratch {
	__u8 in[SE_NORM_MAX];
	__u8 out[SE_NORM_MAX + 8];
	__u32 slash[SE_NORM_DEPTH]; /* out positions of the slashes that start the segments kept */
	__u32 in_len;
	__u32 out_len;
	__u32 depth;                /* entries in slash[] */
	__u32 skip;                 /* input bytes still to skip (the two hex digits of a decoded %XX) */
	__u32 query;                /* past the path: copy as is */
	__u32 done;
};

#define CSUM_CHUNK 512     /* bytes checksummed at a time (see reject.bpf.h) */

struct csum_scratch {
	__u8 buf[CSUM_CHUNK + 4];
};

/*
 * Parsed packets live here, not on the 512-byte stack (TC ingress only: egress has its own). On the
 * stack, the verifier tracks every parsed field and the program's states no longer fit its limits.
 */
struct ingress_scratch {
	struct flow_key fk;         /* first: its address is the value's, no arithmetic on a maybe-NULL pointer */
	struct pkt p;
	struct pkt reply;           /* the reply's view, when a request is answered */
	struct stream_pos pre;      /* the client's stream at the segment's first new byte (see follow.bpf.h) */
	struct stream_pos post;     /* ... where following the segment stopped */
	__u32 keep;                 /* payload bytes to pass: the payload's length, or where to cut it */
	__u32 xl_on;                /* the client's segment is to be translated (xl) when it passes;
				     * XL_OUTBOUND: a segment of an outbound HTTP connection (xlate_outbound) */
	struct seq_xlate xl;        /* its connection's sequence translation (see xlate.bpf.h) */
	struct stream_state fresh;  /* a new streams entry, built here (too big for the stack) */
	__u32 again;                /* the segment starts where the last one passed did (stream_prepare; 2:
				     * it carries the requests judged then, followed as far as that one went) */
	__u8 again_reqs;            /* ... the stream's requests and head hash after that one, */
	__u8 again_started;         /* ... and the requests it started */
	__u64 again_hash;
	__u32 again_end;            /* ... and where it ended (client seq) */
	struct stream_pos cut;      /* pipelined_follow(): the stream before the request being judged, */
	__u32 pipe_at;              /* ... where it starts (client seq) */
	__u32 pipe_next;            /* ... and where the next one does (payload offset), */
	__u32 pipe_res;             /* ... its resource, */
	__u32 pipe_flags;           /* ... and judge()'s flags for it; */
	__u32 pipe_key;             /* the generation << 16 | the port's slot (http_route()'s key_gen_port) */
	__u32 req_off;              /* where the request judged starts in the payload (its parameters are
				     * read from there) */
	__u32 reject_how;           /* refuse_http() -> tc_ingress: reject()'s third argument */
	__u32 seen;                 /* segment_position: the server's socket received bytes before this segment */
};

/* ---- Rules, in two generations (see judge.bpf.h): the control plane writes, the programs read ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);               /* the generation in force, 0 or 1 */
} active_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);             /* one per generation */
	__type(key, __u32);
	__type(value, struct port_slots);
} port_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SE_PORTS_MAX); /* gen * SE_PORTS_MAX + port slot - 1 */
	__type(key, __u32);
	__type(value, struct port_conf);
} inbound_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * SE_HTTP_ROUTES_MAX);   /* two generations during a reload */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct http_route_key);
	__type(value, __u32);               /* resource id; 0 for a search marker that implies no route */
} http_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SE_MAX_RESOURCES);
	__type(key, __u32);
	__type(value, struct res_conf);
} res_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SE_MAX_RESOURCES * SE_FLOW_RULES_PER_RESOURCE);
	__type(key, __u32);
	__type(value, __u64);
} flow_dyn_threshold SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);             /* one per generation */
	__type(key, __u32);
	__type(value, struct sys_conf);
} sys_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct hot_key);
	__type(value, __u64);               /* specific item threshold */
} hot_specific SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);             /* [gen] inbound reject, [HTTP_REPLY_OUTBOUND + gen] outbound 503,
					     * [HTTP_REPLY_KEEPALIVE + gen] inbound reject keeping the connection,
					     * [HTTP_REPLY_OUT_KEEPALIVE + gen] outbound 503 keeping it */
	__type(key, __u32);
	__type(value, struct http_reply);
} http_reply SEC(".maps");

/* Outbound HTTP and TCP resources by remote address (see outbound.bpf.h); outbound connections from
 * connect() to close, by socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct out_route_key);
	__type(value, struct out_route);
} out_routes SEC(".maps");

/*
 * 1 while out_sockops is attached at the cgroup2 root: a TCP resource's connection then takes its
 * concurrency slot when its handshake completes (a SYN alone takes none, so half-open connections hold
 * nothing); 0: at the SYN. Written by the control plane.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} establish_hook SEC(".maps");

/* ---- Statistics and breaker states the control plane reads; the host's metrics it writes ------ */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SE_MAX_RESOURCES);
	__type(key, __u32);
	__type(value, struct res_stats);
} res_stats SEC(".maps");

/* Sentinel's inbound node: every inbound request of every resource, for the system rules. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct res_stats);
} inbound_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SE_PORTS_MAX);
	__type(key, __u16);
	__type(value, struct port_counts);
} port_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sys_metrics);
} sys_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} dp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * SE_MAX_RESOURCES);
	__type(key, __u32);                 /* breaker uid */
	__type(value, struct breaker_state);
} breakers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SE_CB_RINGBUF_BYTES);
} cb_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);               /* state changes that found the ring buffer full */
} cb_events_lost SEC(".maps");

/* ---- Per connection, request and parameter value --------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_INFLIGHT_MAX);
	__type(key, struct flow_key);
	__type(value, struct inflight);
} inflight SEC(".maps");

/* Requests in flight behind a connection's first (pipelining), in order: see struct inflight. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_QUEUES_MAX);
	__type(key, struct flow_key);
	__type(value, struct inflight_queue);
} inflight_queue SEC(".maps");

/* An empty inflight_queue value (never written): what a connection's first queued request starts from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct inflight_queue);
} queue_zero SEC(".maps");

/* How many inflight entries are idle (see struct inflight): an approximation that only errs upward. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} inflight_idle SEC(".maps");

/*
 * Requests refused by dropping their segment (`reject.http: {mode: drop}`, or a blocked request in a
 * GRO-merged skb): connection (flow_key, FLOW_KIND_REQUEST) -> the request's place in the client's stream.
 * The client's TCP sends those bytes again; they get the verdict they were given, without being judged
 * (or counted) a second time, also after the client's FIN (its stack still sends them). Gone at the
 * connection's RST, or evicted.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u32);
} refused SEC(".maps");

/*
 * Where each connection's client stream stands in its HTTP framing (see follow.bpf.h): connection
 * (flow_key, FLOW_KIND_REQUEST) -> the state at the start and at the end of the last segment passed. The
 * next segment starts at one of them: at the end when the stack took that segment, at its start when the
 * stack dropped it (out of memory, a bad checksum, a zero window). Gone at the connection's RST, or
 * evicted (then the stream is read as starting a request: `stream_lost`).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_STREAMS_MAX);
	__type(key, struct flow_key);
	__type(value, struct stream_state);
} streams SEC(".maps");

/*
 * Connections whose stream was followed since the programs were loaded: a bit each, by a keyed hash of
 * the connection's key (see followed_bit), set when its stream state is made and never cleared. A
 * connection whose server socket has received bytes but that has no stream state was followed and then
 * evicted from `streams` (its bit set: reset, see http_segment) or is older than the rules (read as a
 * request's start). A bit that another connection set only makes an old connection reset, never one
 * judged less.
 */
#define SE_FOLLOWED_WORDS 16384     /* 1 Mi bits, 128 KiB */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SE_FOLLOWED_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} followed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn_state);
} conn_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_INFLIGHT_MAX);
	__type(key, __u64);                 /* socket cookie */
	__type(value, struct out_conn);
} out_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_HOT_VALUES_MAX);
	__type(key, struct hot_key);
	__type(value, struct hot_state);
} hot_values SEC(".maps");

/* ---- Per-CPU scratch: what does not fit the 512-byte stack ----------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ingress_scratch);
} ingress_scratch SEC(".maps");

/* Egress has its own, so nothing depends on ingress and egress never nesting on one CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ingress_scratch);
} egress_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct follow_buf);
} follow_buf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union stream_scratch);
} stream_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct param_scan);
} param_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct norm_scratch);
} norm_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_scratch);
} csum_scratch SEC(".maps");

#endif /* SENTINEL_DATAPLANE_BPF_H */

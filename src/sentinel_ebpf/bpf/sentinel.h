/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel/user contract: every struct, enum and constant that crosses the boundary between the BPF
 * programs and the Python control plane is defined here, once. Python gets these layouts from the
 * compiled objects' BTF (tools/gen_types.py -> sentinel_ebpf/_types.py); CI fails when that file is stale.
 * Constants are enums so that they survive into BTF.
 */
#ifndef SENTINEL_EBPF_H
#define SENTINEL_EBPF_H

enum sentinel_limits {
	SE_COMM_LEN = 16,
	SE_ADDR_LEN = 16,         /* IPv4 uses the first 4 bytes */
	SE_MAX_PORT_FILTERS = 8,
	SE_TRACE_RINGBUF_BYTES = 4 << 20,   /* ~45,000 connection events of backlog */
	SE_TRACE_PENDING_MAX = 8192,
	SE_MAX_RESOURCES = 12288,   /* resource ids are 1..SE_MAX_RESOURCES-1; 0 means none */
	SE_PATH_MAX = 64,           /* bytes of an HTTP path prefix (LPM key) */
	SE_REQ_PEEK = 128,          /* bytes of a segment read to find a request line or status line */
	SE_BUCKETS = 20,            /* LeapArray: 20 x 500 ms = 10 s per resource */
	SE_BUCKET_MS = 500,
	SE_FLOW_RULES_PER_RESOURCE = 4,
	SE_INFLIGHT_MAX = 65536,    /* tracked in-flight requests/connections (LRU) */
	SE_STREAMS_MAX = 65536,     /* connections whose HTTP framing is followed (LRU) */
	SE_INFLIGHT_IDLE_MAX = 32768, /* in-flight entries kept idle for their connection's next request */
	SE_PORTS_MAX = 1024,        /* inbound_ports entries: a port's scopes (match.address) each take one */
	SE_PORT_SCOPES_MAX = 8,     /* scopes of one port tried, most specific first */
	SE_PORT_OUT_HTTP = 0x8000,  /* port_slots bit: a remote port of outbound HTTP resources */
	SE_ROUTE_LENS_MAX = 65,     /* distinct path lengths of a port's routes: 0..SE_PATH_MAX */
	SE_ROUTE_PROBES = 7,        /* binary search over SE_ROUTE_LENS_MAX lengths: ceil(log2(66)) probes */
	SE_HTTP_ROUTES_MAX = 131072, /* per generation: routes (10 per any-method resource) and search markers */
	SE_SYSTEM_RULES_MAX = 8,
	SE_MIN_RT_INIT_MS = 60000,   /* a bucket's min RT before any completion (Sentinel's default) */
	SE_HOTSPOT_RULES_PER_RESOURCE = 2,
	SE_HOT_PATTERN_MAX = 72,    /* "\n" + header name + ":" or query name + "=" */
	SE_HOT_VALUE_MAX = 64,      /* bytes of a parameter value that are hashed (decoded, OWS trimmed) */
	SE_HOT_VALUE_SCAN = 192,    /* bytes of a raw value read to find them (3 per %XX-encoded byte) */
	SE_VLAN_MAX = 2,            /* 802.1Q / 802.1ad tags parsed (QinQ) */
	SE_IPV6_EXT_MAX = 4,        /* IPv6 extension headers parsed before the TCP header */
	SE_PARAM_PEEK = 2048,       /* bytes of a request searched for a header or query parameter */
	SE_CAS_TRIES = 4,           /* compare-and-swap tries of a throttling or hotspot update (see cas_tries) */
	SE_HOT_VALUES_MAX = 262144, /* default size of the per-value LRU shared by all hotspot rules (set at load) */
	SE_BREAKERS_PER_RESOURCE = 2,
	SE_CB_BUCKETS_MAX = 16,     /* statSlidingWindowBucketCount the kernel can hold */
	SE_CB_RINGBUF_BYTES = 64 * 1024,
	SE_HTTP_REPLY_MAX = 512,    /* bytes of the kernel-built HTTP response (bpf_csum_diff's limit) */
	SE_REPLY_REQUEST_MAX = 1536, /* a request segment longer than this is answered with RST instead */
	SE_INCOMPLETE_TRIES = 6,    /* drops of one incomplete request line before the connection is reset */
	SE_PIPELINED_MAX = 8,       /* requests judged inside one client segment after its first (more: cut) */
	SE_QUEUED_MAX = 16,         /* requests in flight behind a connection's first (pipelining; a power of 2) */
	SE_QUEUES_MAX = 16384,      /* connections with requests queued so (inflight_queue, LRU) */
};

/* Why a connection event was emitted. */
enum conn_direction {
	CONN_CONNECT = 0,          /* outgoing: connect() attempt */
	CONN_ACCEPT = 1,           /* incoming: accept() returned it */
};

/* How an outgoing attempt ended, from the first state change after SYN_SENT. */
enum conn_outcome {
	CONN_OUTCOME_UNKNOWN = 0,
	CONN_OUTCOME_ESTABLISHED = 1,
	CONN_OUTCOME_FAILED = 2,   /* refused, timed out, unreachable, or closed before established */
};

/* Per-CPU counters of the tracer (index into the `trace_stats` map). */
enum trace_stat {
	TRACE_STAT_EVENTS = 0,
	TRACE_STAT_LOST = 1,        /* ring buffer full: event dropped */
	TRACE_STAT_PENDING_FULL = 2, /* no room to remember an attempt: it is not traced */
	TRACE_STAT_MAX = 3,
};

/* Sentinel block types (values are Sentinel's). */
enum block_type {
	BLOCK_NONE = 0,
	BLOCK_FLOW = 1,
	BLOCK_ISOLATION = 2,
	BLOCK_CIRCUIT_BREAKING = 3,
	BLOCK_SYSTEM = 4,
	BLOCK_HOTSPOT = 5,
	BLOCK_TYPE_MAX = 6,
};

/* How a blocked request is answered. */
enum reject_mode {
	REJECT_HTTP_REPLY = 0,     /* kernel-built HTTP response to the client, RST to the server */
	REJECT_RST = 1,
	REJECT_DROP = 2,
};

/* What happens to a request line that does not end in the segment where it starts (reject.incomplete). */
enum incomplete_mode {
	INCOMPLETE_DROP = 0,        /* drop the segment so the client sends it again whole; reset after tries */
	INCOMPLETE_PASS = 1,        /* let it through unjudged (fail open), counted */
};

enum http_method {
	HTTP_METHOD_NONE = 0,
	HTTP_GET = 1,
	HTTP_HEAD = 2,
	HTTP_POST = 3,
	HTTP_PUT = 4,
	HTTP_DELETE = 5,
	HTTP_CONNECT = 6,
	HTTP_OPTIONS = 7,
	HTTP_TRACE = 8,
	HTTP_PATCH = 9,
	HTTP_OTHER = 10,            /* any other method, as nginx reads one: upper-case letters, '-' and '_';
	                             * matched by the resources that name no method */
	HTTP_METHOD_MAX = 11,
};

enum flow_behavior {
	FLOW_REJECT = 0,
	FLOW_THROTTLING = 1,
};

/* Per-port counters of traffic that passed unclassified (index into port_counters values). */
enum port_counter {
	PORT_TLS = 0,               /* TLS record on an HTTP resource port */
	PORT_HTTP2 = 1,             /* HTTP/2 preface */
	PORT_NOT_REQUEST_LINE = 2,  /* payload at the stream's next byte that does not start a request (bodies) */
	PORT_NO_ROUTE = 3,          /* request line that matches no resource on this port */
	PORT_GSO = 4,               /* GRO/GSO-merged segment judged (a blocked one is dropped: it comes again) */
	PORT_RETRANSMIT = 5,        /* data the server's stack received already: not judged again */
	PORT_OUT_OF_ORDER = 6,      /* data beyond a gap in the stream: dropped, judged when it comes in order */
	PORT_NO_SOCKET = 7,         /* data of a connection this host does not have (spoofed, closed): not judged */
	PORT_INCOMPLETE = 8,        /* a request line that does not end in its segment */
	PORT_INCOMPLETE_PASSED = 9, /* ... passed unjudged (reject.incomplete: pass) */
	PORT_INCOMPLETE_RESET = 10, /* ... still incomplete after SE_INCOMPLETE_TRIES drops: connection reset */
	PORT_DEFERRED_ACK = 11,     /* a handshake's bare last ACK dropped (deferred accept) */
	PORT_FRAGMENT = 12,         /* first IP fragment of a TCP segment: not reassembled, so dropped (unless
				     * reject.incomplete is pass) */
	PORT_REFUSED_AGAIN = 13,    /* a dropped request sent again: refused again, not judged or counted twice */
	PORT_BODY = 14,             /* a segment that starts inside a request's head or body: not judged */
	PORT_CUT = 15,              /* a segment cut before a request that starts inside it and cannot be judged
				     * there (see follow.bpf.h; it comes again) */
	PORT_STREAM_LOST = 16,      /* a segment where the stream's framing was not known: read as a request's start */
	PORT_FRAMING_RESET = 17,    /* framing no server reads (bad Content-Length, Transfer-Encoding): reset */
	PORT_SWALLOWED = 18,        /* a segment of a refused request that goes on past its first segment,
				     * acknowledged in the server's place (the server never gets it) */
	PORT_URGENT = 19,           /* a client segment with an urgent pointer: URG cleared (the server reads
				     * every byte, as judged) */
	PORT_LOST_RESET = 20,       /* a segment of a connection followed before, with bytes received, whose
				     * stream state was evicted from the map: connection reset */
	PORT_TARGET_UNREAD = 21,    /* a request target whose path goes on past SE_NORM_MAX bytes or SE_NORM_DEPTH
				     * segments when it must be normalised: what a server matches cannot be told,
				     * so the connection is reset (unless reject.incomplete is pass) */
	PORT_PIPELINED = 22,        /* a request judged where it starts inside a segment (pipelined behind
				     * another, or after a body) */
	PORT_QUEUE_FULL = 23,       /* a request not judged yet because SE_QUEUED_MAX are in flight before it on
				     * its connection: its segment dropped or cut (it comes again) */
	PORT_COUNTER_MAX = 24,
};

/* Global data-plane counters (per-CPU array `dp_counters`). */
enum dp_counter {
	DP_PACKETS = 0,             /* every packet tc_ingress saw */
	DP_MALFORMED = 1,           /* truncated or inconsistent headers: passed */
	DP_INFLIGHT_FULL = 2,       /* could not track a request: passed, not counted as in flight */
	DP_REPLY_FAILED = 3,        /* building a reject reply failed: packet dropped instead */
	DP_REPLY_SENT = 4,
	DP_RST_SENT = 5,
	DP_CONNECT_REFUSED = 6,     /* outbound connect() failed fast by a rule */
	DP_GSO_DROPPED = 7,         /* a blocked request in a GRO-merged skb: dropped, not answered */
	DP_THROTTLE_CONTENDED = 8,  /* throttling: compare-and-swap lost 4 times in a row, request passed */
	DP_UNPARSED = 9,            /* IP traffic whose TCP ports cannot be read: later fragments, header
				     * chains past the bound (VLAN tags, IPv6 extension headers): passed */
	DP_CONCURRENCY_REPAIRED = 10, /* reconcile: in-flight entries released, or drift corrected */
	DP_CUT_FAILED = 11,         /* rewriting a client segment failed (cutting it before a request, clearing its
				     * urgent pointer): dropped instead (it comes again) */
	DP_REPLY_KEPT = 12,         /* of the replies sent: answered in the connection's stream, connection kept */
	DP_REPLY_CLOSED = 13,       /* ... answered and closed instead: the client asked to close (Connection:
				     * close, HTTP/1.0, FIN), or the request was not whole in its segment */
	DP_REPLY_OWED = 14,         /* ... reset instead: the server owed responses a reply would overtake */
	DP_CHAIN_DROPPED = 15,      /* IPv6 extension headers past the bound: dropped (nothing could judge what
				     * they carry), unless reject.incomplete is pass */
	DP_HOT_UNSEEN = 16,         /* a hotspot parameter not found in what was searched of a head that goes on
				     * (or its value cut there): keyed to one shared bucket, not let through */
	DP_COUNTER_MAX = 17,
};

/*
 * Rule sets are applied atomically by generation: ports, routes and resource configurations of the next
 * generation are written beside the current ones, then `active_gen` flips (one 4-byte store), then the
 * old generation is deleted. Statistics are keyed by resource id alone, so a resource that stays keeps
 * its statistics across reloads.
 */

/*
 * port_slots value, indexed by generation: every packet's first check, one load. slot[port] & 0x7fff is
 * 0 for a port nothing protects, else 1 + the port's index in inbound_ports (gen * SE_PORTS_MAX +
 * slot - 1); SE_PORT_OUT_HTTP marks a remote port of outbound HTTP resources. Indexed by the port's 16
 * bits as they stand in the TCP header (network byte order): no byte swap, so every verifier can bound
 * the index (5.x/6.1 cannot bound the result of a swap).
 */
struct port_slots {
	__u16 slot[65536];
};

/*
 * The path lengths (bytes) of the routes of one port or outbound service, ascending. A request's
 * longest matching prefix is found by binary search on these lengths (Waldvogel et al., "Scalable
 * high speed IP routing lookups", 1997): one exact-match hash probe per step, at most SE_ROUTE_PROBES,
 * whatever the number of routes. The control plane adds a marker entry wherever the search must go on
 * to a longer length; a marker's value is the best route it implies (0: none yet).
 */
struct route_lens {
	__u8 n;
	__u8 len[SE_ROUTE_LENS_MAX];
};

/*
 * inbound_ports value: what is protected on a local port, for the connections of its scope. A port whose
 * resources name local addresses (match.address) or the server's cgroup (match.cgroup) has one entry per
 * scope, chained by `next` from the one port_slots points to, most specific first, the entry for every
 * connection last (if any resource names neither); the first entry whose scope holds the connection
 * (its local address, and the cgroup of its local socket) governs it.
 */
struct port_conf {
	__u32 tcp_resource;         /* resource counting connections (SYN) on this port, 0 = none */
	__u8 has_http;              /* HTTP resources exist: look up request lines */
	__u8 reject_tcp;            /* enum reject_mode (RST or DROP) */
	__u8 reject_http;           /* enum reject_mode */
	__u8 incomplete;            /* enum incomplete_mode: a request line split over segments */
	__u8 defer_accept;          /* hold the handshake's bare last ACK: the first request completes it */
	struct route_lens lens;     /* of this port's http_routes */
	__u8 scope_family;          /* 0: every local address; 4 or 6: those in scope_net/scope_mask */
	__u16 slot;                 /* this entry's own slot: the key of its http_routes */
	__u16 next;                 /* the slot of the port's next scope to try, 0 = none */
	__u8 scope_net[SE_ADDR_LEN];  /* network, masked (IPv4 in the first 4 bytes) */
	__u8 scope_mask[SE_ADDR_LEN];
	__u32 scope_cgroup_level;   /* 0: any socket; else the local socket's ancestor at this level ... */
	__u64 scope_cgroup_id;      /* ... is this cgroup (the server runs in it or below it) */
};

/* http_reply value, indexed by generation: the response sent to a blocked HTTP client. */
struct http_reply {
	__u32 len;
	__u8 data[SE_HTTP_REPLY_MAX]; /* zero after len: checksums read whole 4-byte words */
};

/* port_stats value (struct port_counts): traffic on a protected port that passed unclassified, by enum port_counter. */
struct port_counts {
	__u64 count[PORT_COUNTER_MAX];
};

/* http_routes key (a hash, exact match): a path prefix, zero after its length. */
struct http_route_key {
	__u32 prefixlen;            /* 32 + 8 x path bytes (the key once was an LPM trie's) */
	__u8 gen;
	__u8 method;                /* enum http_method */
	__u16 port;                 /* inbound: the port_conf's slot; outbound: the service id */
	__u8 path[SE_PATH_MAX];
};

struct flow_rule_k {
	__u32 stat_resource;        /* whose statistics count: itself, or refResource (AssociatedResource) */
	__u8 behavior;              /* enum flow_behavior */
	__u8 dynamic;               /* WarmUp / MemoryAdaptive: the threshold lives in flow_dyn_threshold */
	__u8 _pad[2];
	__u32 interval_ms;          /* statIntervalInMs, a multiple of SE_BUCKET_MS up to the array's span */
	__u64 threshold_milli;      /* allowed count per interval x 1000 (Direct) */
	__u64 cost_ns;              /* Throttling: ns per request = interval / threshold (0 = block all) */
	__u64 max_queue_ns;         /* Throttling: maxQueueingTimeMs */
};

/*
 * flow_dyn_threshold value (u64 threshold x 1000), indexed by
 * (gen * SE_MAX_RESOURCES + resource id) * SE_FLOW_RULES_PER_RESOURCE + rule index: the control plane
 * recomputes WarmUp and MemoryAdaptive thresholds and writes them here, apart from the kernel-written state.
 */

enum hot_param {
	HOT_REMOTE_IP = 0,          /* the client address (16 bytes; IPv4 in the first 4) */
	HOT_HEADER = 1,             /* an HTTP header's value, name matched case-insensitively */
	HOT_QUERY = 2,              /* a query parameter's value; name and value %XX-decoded */
};

struct hotspot_rule_k {
	__u32 uid;                  /* identity of this rule's per-value state; new when the rule changes */
	__u8 metric;                /* 0 Concurrency, 1 QPS */
	__u8 behavior;              /* 0 Reject, 1 Throttling */
	__u8 param;                 /* enum hot_param */
	__u8 pattern_len;
	__u8 pattern[SE_HOT_PATTERN_MAX];
	__u8 v6_prefix_len;         /* remote_ip: IPv6 clients are keyed by this prefix of their address */
	__u8 _pad[7];
	__u64 threshold;
	__u64 burst;
	__u64 duration_ms;
	__u64 max_queue_ms;
};

/* hot_values / hot_specific key: a rule and the FNV-1a 64 hash of a parameter value. */
struct hot_key {
	__u32 uid;
	__u32 _pad;
	__u64 hash;
};

enum cb_strategy {
	CB_SLOW_REQUEST_RATIO = 0,
	CB_ERROR_RATIO = 1,
	CB_ERROR_COUNT = 2,
};

/* Breaker states (sentinel-golang's numbering). */
enum cb_state_kind {
	CB_CLOSED = 0,
	CB_HALF_OPEN = 1,
	CB_OPEN = 2,
};

struct breaker_k {
	__u32 uid;                  /* identity of the breaker's state; new when the rule changes */
	__u8 strategy;              /* enum cb_strategy */
	__u8 _pad[3];
	__u32 retry_timeout_ms;
	__u32 min_request;
	__u32 interval_ms;          /* statIntervalMs */
	__u32 bucket_ms;            /* interval / bucket count */
	__u32 probe_num;
	__u32 _pad2;
	__u64 max_rt_ms;            /* slow means rt > this */
	__u64 threshold_ppb;        /* ratio x 1e9, or ErrorCount count */
};

struct cb_bucket {
	__u64 start_ms;
	__u64 bad;
	__u64 total;
};

/* breakers value, keyed by breaker uid: the state machine (changed by compare-and-swap) and its window. */
struct breaker_state {
	__u64 state;                /* enum cb_state_kind (64-bit: compare-and-swap on BPF ISA v1) */
	__u64 probes;
	__u64 next_retry_ms;
	struct cb_bucket buckets[SE_CB_BUCKETS_MAX];
};

/* cb_events record: one state change. */
struct cb_event {
	__u64 ts_ms;                /* the data plane's clock (CLOCK_MONOTONIC ms) */
	__u32 uid;
	__u32 resource;
	__u8 from_state;            /* enum cb_state_kind */
	__u8 to_state;
	__u8 _pad[6];
	__u64 snapshot_ppb;         /* ratio x 1e9 or the error count that tripped it; 0 otherwise */
};

/* out_routes LPM key: generation, family, remote port exactly, then the remote address by prefix. */
struct out_route_key {
	__u32 prefixlen;            /* 32 + address prefix bits */
	__u8 gen;
	__u8 family;                /* 4 or 6 */
	__u16 port;                 /* network byte order */
	__u8 addr[SE_ADDR_LEN];
};

struct out_route {
	__u32 resource;             /* TCP resource judged at connect(), 0 = none */
	__u32 cgroup_level;         /* the resource's cgroup depth below the cgroup2 root (0: any process) */
	__u64 cgroup_id;
	__u32 http_service;         /* HTTP resources of this host and port: http_routes keys with this id */
	struct route_lens lens;     /* of this service's http_routes */
};

/* The high bit of http_route_key.gen marks outbound routes, whose `port` field holds a service id. */
enum route_flags {
	ROUTE_OUTBOUND = 0x80,
	HTTP_REPLY_OUTBOUND = 2,    /* http_reply index offset of the outbound (503) replies */
	HTTP_REPLY_KEEPALIVE = 4,   /* ... of the inbound replies that keep the connection (no Connection: close) */
	HTTP_REPLY_OUT_KEEPALIVE = 6, /* ... of the outbound 503s that keep the caller's connection */
};

/* out_conns value, keyed by socket cookie: an outbound connection from connect() to close. */
struct out_conn {
	__u64 start_ns;
	__u32 resource;
	__u32 established;
};

/* res_conf value, indexed by gen * SE_MAX_RESOURCES + resource id. */
struct res_conf {
	/* the counts every request reads share the first cache line with the first flow rule */
	__u32 nflow;
	__u32 isolation_threshold;  /* 0 = no isolation rule */
	__u32 nhot;
	__u32 nbreakers;
	struct flow_rule_k flow[SE_FLOW_RULES_PER_RESOURCE];
	__u64 last_passed_ns[SE_FLOW_RULES_PER_RESOURCE]; /* Throttling state, written by the kernel */
	struct hotspot_rule_k hot[SE_HOTSPOT_RULES_PER_RESOURCE];
	struct breaker_k breakers[SE_BREAKERS_PER_RESOURCE];
};

struct stat_bucket {
	__u64 start_ms;
	__u64 pass;
	__u64 block;
	__u64 complete;
	__u64 error;
	__u64 rt_sum_ms;
	__u64 min_rt_ms;
};

/* System rule metric types (Sentinel's values). */
enum system_metric {
	SYS_LOAD = 0,
	SYS_AVG_RT = 1,
	SYS_CONCURRENCY = 2,
	SYS_INBOUND_QPS = 3,
	SYS_CPU_USAGE = 4,
};

struct sys_rule_k {
	__u8 metric;                /* enum system_metric */
	__u8 bbr;                   /* strategy BBR */
	__u8 _pad[6];
	__u64 trigger_milli;        /* triggerCount x 1000 */
};

/* sys_conf value, indexed by generation. */
struct sys_conf {
	__u32 nrules;
	__u32 _pad;
	struct sys_rule_k rules[SE_SYSTEM_RULES_MAX];
};

/* sys_metrics value: host metrics sampled by the control plane (valid = 0: not read yet, rules pass). */
struct sys_metrics {
	__u64 load_milli;           /* 1-minute load average x 1000 */
	__u64 cpu_milli;            /* CPU usage ratio x 1000 */
	__u8 load_valid;
	__u8 cpu_valid;
	__u8 _pad[6];
};

/* res_stats value, indexed by resource id: LeapArray buckets, cumulative totals and live gauges. */
struct res_stats {
	struct stat_bucket buckets[SE_BUCKETS];
	__s64 concurrency;
	__u64 total_pass;
	__u64 total_block;
	__u64 total_complete;
	__u64 total_error;
	__u64 total_rt_ms;
	__u64 block_by_type[BLOCK_TYPE_MAX];
	__u64 flow_wait;            /* admitted into the throttling virtual queue with a wait > 0 */
	__u64 total_abort;          /* requests the client abandoned (RST, or FIN and no response): not errors */
};

enum inflight_state {
	INFLIGHT_IDLE = 0,
	INFLIGHT_ACTIVE = 1,
	INFLIGHT_PENDING = 2,
};

enum flow_kind {
	FLOW_KIND_CONNECTION = 0,   /* a TCP resource's connection, from SYN to FIN/RST */
	FLOW_KIND_REQUEST = 1,      /* an HTTP request, from request line to response status line */
	FLOW_KIND_OUT_REQUEST = 2,  /* an outbound HTTP request a local process sent */
};

/* inflight key: the client -> server 4-tuple as seen at ingress (addresses in network byte order). */
struct flow_key {
	__u8 saddr[SE_ADDR_LEN];
	__u8 daddr[SE_ADDR_LEN];
	__u16 sport;                /* network byte order */
	__u16 dport;
	__u8 family;                /* 4 or 6 */
	__u8 kind;                  /* enum flow_kind */
	__u8 _pad[2];
};

/*
 * inflight value. A request's entry is not deleted when its response is seen: it turns idle (active 0)
 * and the connection's next request reuses it in place, so a keep-alive connection costs one map insert,
 * not an insert and a delete per request. The entry goes at the connection's FIN or RST. At most
 * SE_INFLIGHT_IDLE_MAX entries are kept idle (map `inflight_idle` counts them); past that, completion
 * deletes as before, so idle connections never crowd out requests in flight.
 */
struct inflight {
	__u64 start_ns;
	__u64 active;               /* 1 while in flight (compare-and-swap), 0 idle, 2 a connection's
				     * handshake not complete (INFLIGHT_PENDING: its slot is taken at
				     * BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) */
	__u32 resource;
	__u8 is_http;
	__u8 inbound;               /* counted in the inbound node (system rules were in force at its start) */
	__u8 client_closed;         /* the client sent FIN with the request in flight: no response is an abort */
	__u8 _pad;
	__u32 q_head;               /* requests judged behind this one, in flight (pipelining): slots q_head to */
	__u32 q_tail;               /* q_tail - 1 (mod SE_QUEUED_MAX) of the connection's inflight_queue entry */
	struct hot_key hot[SE_HOTSPOT_RULES_PER_RESOURCE]; /* concurrency hotspot values to release (uid 0: none) */
};

/* A request in flight behind another of its connection (see struct inflight's q_head). */
struct queued_request {
	__u64 start_ns;
	__u32 resource;
	__u8 inbound;
	__u8 is_http;
	__u8 _pad[2];
	struct hot_key hot[SE_HOTSPOT_RULES_PER_RESOURCE];
};

/* inflight_queue value, keyed as the connection's inflight entry. */
struct inflight_queue {
	struct queued_request q[SE_QUEUED_MAX];
};

/*
 * The control plane's reconciliation runs program `reconcile` through BPF_PROG_TEST_RUN with one of these
 * as packet data (atomic updates beside the data plane's own).
 */
enum reconcile_op {
	RECONCILE_RELEASE = 0,      /* release key's entry if its connection has no socket (returns 1) */
	RECONCILE_ADJUST = 1,       /* add delta to resource's concurrency (0: the inbound node) */
};

struct reconcile_req {
	struct flow_key key;
	__s64 delta;
	__u64 grace_ns;             /* RELEASE: entries younger than this are kept */
	__u32 resource;
	__u8 op;                    /* enum reconcile_op */
	__u8 _pad[3];
};

struct conn_event {
	__u64 ts_ns;               /* CLOCK_MONOTONIC (bpf_ktime_get_ns) when connect()/accept() ran */
	__u32 pid;                 /* tgid */
	__u32 tid;
	__u32 uid;
	__u16 family;              /* AF_INET or AF_INET6 */
	__u16 sport;               /* host byte order */
	__u16 dport;               /* host byte order */
	__u8 direction;            /* enum conn_direction */
	__u8 outcome;              /* enum conn_outcome */
	__u8 saddr[SE_ADDR_LEN];   /* network byte order */
	__u8 daddr[SE_ADDR_LEN];
	char comm[SE_COMM_LEN];
};

/*
 * HTTP tracing (httptrace.bpf.c): the data that TCP sockets move through the read/write system call
 * family, and the plain text that OpenSSL's SSL_read/SSL_write move, shipped to user space in bounded
 * chunks; user space reassembles HTTP/1.x messages. Each ring buffer record is a struct http_event
 * followed by `copied` bytes of data: all the call moved, or for a longer call its first
 * SE_HTTP_DATA_MAX - SE_HTTP_TAIL bytes and its last SE_HTTP_TAIL (so a small request pipelined after a
 * large body is still seen).
 */
enum http_trace_limits {
	SE_HTTP_DATA_MAX = 8192,          /* bytes of data copied per call (power of two); the rest is counted */
	SE_HTTP_TAIL = 2048,              /* of which, for a longer call, the call's last bytes */
	SE_HTTP_MAX_IOV = 8,              /* iovec entries copied per readv/writev/recvmsg/sendmsg */
	SE_HTTP_RINGBUF_BYTES = 16 << 20,
	SE_HTTP_CONN_MAX = 65536,         /* sockets and TLS sessions remembered (LRU) */
	SE_HTTP_ACTIVE_MAX = 16384,       /* threads inside a traced call at once */
};

enum http_syscall {                   /* the calls traced; numbers per architecture come from user space */
	HTTP_SC_READ = 1,
	HTTP_SC_WRITE,
	HTTP_SC_READV,
	HTTP_SC_WRITEV,
	HTTP_SC_RECVFROM,
	HTTP_SC_SENDTO,
	HTTP_SC_RECVMSG,
	HTTP_SC_SENDMSG,
	HTTP_SC_SENDFILE,
	HTTP_SC_MAX,
};

enum http_event_kind {
	HTTP_EV_DATA = 0,                 /* data moved on a connection */
	HTTP_EV_CLOSE = 1,                /* the socket closed: a message delimited by close is complete */
};

enum http_data_dir {
	HTTP_DIR_RECV = 0,
	HTTP_DIR_SEND = 1,
};

enum http_data_source {
	HTTP_SRC_SYSCALL = 0,
	HTTP_SRC_TLS = 1,                 /* OpenSSL plain text (uprobes) */
};

enum http_trace_stat {
	HTTP_STAT_EVENTS = 0,
	HTTP_STAT_LOST,                   /* ring buffer full */
	HTTP_STAT_TRUNCATED,              /* calls that moved more than SE_HTTP_DATA_MAX (the rest counted) */
	HTTP_STAT_ACTIVE_FULL,            /* calls not traced: no room to remember them */
	HTTP_STAT_SKIPPED,                /* calls on sockets that are not HTTP */
	HTTP_STAT_MAX,
};

struct http_event {
	__u64 ts_ns;                      /* CLOCK_MONOTONIC when the call returned */
	__u64 conn_id;                    /* the socket (or the TLS session when its socket is unknown) */
	__u32 pid;                        /* tgid */
	__u32 tid;
	__u32 len;                        /* bytes the call moved */
	__u32 copied;                     /* bytes of data that follow this header (<= SE_HTTP_DATA_MAX) */
	__u16 family;                     /* AF_INET, AF_INET6, or 0 when the socket is unknown */
	__u16 sport;                      /* local port, host byte order */
	__u16 dport;                      /* remote port, host byte order */
	__u8 kind;                        /* enum http_event_kind */
	__u8 dir;                         /* enum http_data_dir */
	__u8 source;                      /* enum http_data_source */
	__u8 syscall;                     /* enum http_syscall (0 for TLS) */
	__u16 tail;                       /* the last `tail` copied bytes are the call's last bytes: */
	__u8 _pad[4];                     /* len - copied bytes between them and the first ones were not copied */
	__u8 saddr[SE_ADDR_LEN];          /* local address, network byte order */
	__u8 daddr[SE_ADDR_LEN];          /* remote address */
	char comm[SE_COMM_LEN];
};

#endif /* SENTINEL_EBPF_H */

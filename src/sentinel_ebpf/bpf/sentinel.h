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
	SE_TRACE_RINGBUF_BYTES = 256 * 1024,
	SE_TRACE_PENDING_MAX = 8192,
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

#endif /* SENTINEL_EBPF_H */

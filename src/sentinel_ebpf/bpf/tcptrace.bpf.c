// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * TCP connection tracer without kprobes.
 *
 * connect: the sock:inet_sock_set_state tracepoint fires CLOSE -> SYN_SENT inside connect(), in the
 * caller's context, but before the kernel picks the source port. So the caller is remembered per socket
 * and the event is emitted at the socket's next state change (ESTABLISHED, or CLOSE when refused, timed
 * out or closed early), when the source port is known. The event carries the time connect() ran.
 *
 * accept: child sockets become ESTABLISHED in softirq context, where no process is current, so accepts
 * are taken from the accept()/accept4() syscall exit instead: the returned fd is resolved to its socket.
 *
 * Each hook exists as tp_btf (BTF-typed) and raw_tp (any kernel with raw tracepoints); user space loads
 * one flavour. All reads go through CO-RE so both flavours share one body.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sentinel.h"
#include "maps.bpf.h"
#include "sock.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

const volatile __u32 targ_tgid = 0;
const volatile __u32 targ_nports = 0;
const volatile __u16 targ_ports[SE_MAX_PORT_FILTERS] = {};
const volatile bool targ_filter_comm = false;
const volatile char targ_comm[SE_COMM_LEN] = {};
const volatile bool targ_accept = false;
const volatile __s32 targ_accept_nr = -1;   /* syscall numbers are per architecture: set from user space */
const volatile __s32 targ_accept4_nr = -1;

struct pending {
	__u64 ts_ns;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	char comm[SE_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_TRACE_PENDING_MAX);
	__type(key, __u64);              /* struct sock * */
	__type(value, struct pending);
} pending_connects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SE_TRACE_PENDING_MAX);
	__type(key, __u32);              /* tid inside accept()/accept4() */
	__type(value, __u64);            /* entry time */
} pending_accepts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SE_TRACE_RINGBUF_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TRACE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} trace_stats SEC(".maps");

/* Keep the contract types in BTF even where no map names them. */
const enum conn_direction _conn_direction_unused __attribute__((unused)) = CONN_CONNECT;
const enum conn_outcome _conn_outcome_unused __attribute__((unused)) = CONN_OUTCOME_UNKNOWN;
const enum trace_stat _trace_stat_unused __attribute__((unused)) = TRACE_STAT_EVENTS;
const enum sentinel_limits _sentinel_limits_unused __attribute__((unused)) = SE_COMM_LEN;
const struct conn_event _conn_event_unused __attribute__((unused)) = {};

static __always_inline bool comm_allowed(const char *comm)
{
	if (!targ_filter_comm)
		return true;
	for (int i = 0; i < SE_COMM_LEN; i++) {
		if (comm[i] != targ_comm[i])
			return false;
		if (comm[i] == 0)
			return true;
	}
	return true;
}

static __always_inline bool port_allowed(__u16 port)
{
	if (targ_nports == 0)
		return true;
	for (int i = 0; i < SE_MAX_PORT_FILTERS; i++) {
		if (i >= targ_nports)
			break;
		if (targ_ports[i] == port)
			return true;
	}
	return false;
}

static __always_inline struct conn_event *reserve_event(void)
{
	struct conn_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		percpu_inc(&trace_stats, TRACE_STAT_LOST);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	return e;
}

static __always_inline void submit_event(struct conn_event *e)
{
	bpf_ringbuf_submit(e, 0);
	percpu_inc(&trace_stats, TRACE_STAT_EVENTS);
}

static __always_inline int on_state_change(const struct sock *sk, int oldstate, int newstate)
{
	__u64 key = (__u64)sk;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	if (newstate == TCP_SYN_SENT) {
		struct pending p = {};
		__u64 pid_tgid = bpf_get_current_pid_tgid();

		p.pid = pid_tgid >> 32;
		if (targ_tgid && p.pid != targ_tgid)
			return 0;
		/* connect() sets the destination before SYN_SENT: filter now, so that other traffic never
		 * takes room in pending_connects (under heavy connection churn, LRU eviction could otherwise
		 * drop an attempt we are asked to report) */
		if (!port_allowed(bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport))))
			return 0;
		bpf_get_current_comm(p.comm, sizeof(p.comm));
		if (!comm_allowed(p.comm))
			return 0;
		p.ts_ns = bpf_ktime_get_ns();
		p.tid = (__u32)pid_tgid;
		p.uid = (__u32)bpf_get_current_uid_gid();
		if (bpf_map_update_elem(&pending_connects, &key, &p, BPF_ANY))
			percpu_inc(&trace_stats, TRACE_STAT_PENDING_FULL);
		return 0;
	}

	if (oldstate != TCP_SYN_SENT)
		return 0;

	struct pending *p = bpf_map_lookup_elem(&pending_connects, &key);
	if (!p)
		return 0;

	struct conn_event *e = reserve_event();
	if (!e)
		goto out;
	if (!FILL_TUPLE(e, sk) || !port_allowed(e->dport)) {
		bpf_ringbuf_discard(e, 0);
		goto out;
	}
	e->ts_ns = p->ts_ns;
	e->pid = p->pid;
	e->tid = p->tid;
	e->uid = p->uid;
	__builtin_memcpy(e->comm, p->comm, sizeof(e->comm));
	e->direction = CONN_CONNECT;
	e->outcome = newstate == TCP_ESTABLISHED ? CONN_OUTCOME_ESTABLISHED : CONN_OUTCOME_FAILED;
	submit_event(e);
out:
	bpf_map_delete_elem(&pending_connects, &key);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_btf, const struct sock *sk, int oldstate, int newstate)
{
	return on_state_change(sk, oldstate, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw, const struct sock *sk, int oldstate, int newstate)
{
	return on_state_change(sk, oldstate, newstate);
}

static __always_inline int on_sys_enter(long id)
{
	if (!targ_accept || (id != targ_accept_nr && id != targ_accept4_nr))
		return 0;

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u64 now = bpf_ktime_get_ns();

	if (targ_tgid && (pid_tgid >> 32) != targ_tgid)
		return 0;
	bpf_map_update_elem(&pending_accepts, &tid, &now, BPF_ANY);
	return 0;
}

static __always_inline const struct sock *sock_of_fd(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;

	if (!fds || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

static __always_inline int on_sys_exit(long ret)
{
	if (!targ_accept)
		return 0;

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u64 *started = bpf_map_lookup_elem(&pending_accepts, &tid);

	if (!started)
		return 0;
	bpf_map_delete_elem(&pending_accepts, &tid);
	if (ret < 0)
		return 0;

	const struct sock *sk = sock_of_fd(ret);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	struct conn_event *e = reserve_event();
	if (!e)
		return 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	/* For an accepted socket the local port is the service port: filter on it. */
	if (!FILL_TUPLE(e, sk) || !port_allowed(e->sport) || !comm_allowed(e->comm)) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid_tgid >> 32;
	e->tid = tid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->direction = CONN_ACCEPT;
	e->outcome = CONN_OUTCOME_ESTABLISHED;
	submit_event(e);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter_btf, struct pt_regs *regs, long id)
{
	return on_sys_enter(id);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_btf, struct pt_regs *regs, long ret)
{
	return on_sys_exit(ret);
}

SEC("raw_tp/sys_enter")
int BPF_PROG(sys_enter_raw, struct pt_regs *regs, long id)
{
	return on_sys_enter(id);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(sys_exit_raw, struct pt_regs *regs, long ret)
{
	return on_sys_exit(ret);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

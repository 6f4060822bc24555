// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * HTTP tracer: what TCP sockets carry through the read/write system call family (and sendfile), and the
 * plain text OpenSSL moves through SSL_read/SSL_write, as the application sees it.
 *
 * The kernel side only ships data: at syscall exit, when the call moved bytes on a TCP socket, up to
 * SE_HTTP_DATA_MAX of them go to a ring buffer with the call's size, the socket (its address is the
 * connection id) and its addresses. HTTP/1.x messages, which may span several calls, are reassembled
 * by user space. Work per call is bounded: at most SE_HTTP_DATA_MAX bytes copied (its first bytes and,
 * for a longer call, its last SE_HTTP_TAIL) from at most SE_HTTP_MAX_IOV iovec entries.
 *
 * Streams are classified by the first bytes they move: a request line or a status line marks the socket
 * HTTP, anything else (TLS records, other protocols) marks it "not HTTP" and its later calls cost one map
 * lookup. The classification is forgotten when the socket closes (inet_sock_set_state -> CLOSE), which
 * also tells user space that a message delimited by the close is complete.
 *
 * TLS: uprobes on SSL_read/SSL_write (and the _ex variants) remember the call per thread; the socket
 * syscalls OpenSSL makes inside the call tie the SSL session to its socket; the uretprobe ships the
 * plain text. The encrypted bytes on the socket itself are never HTTP and so are skipped.
 *
 * (BPF_KPROBE/BPF_KRETPROBE are the argument unpackers; they serve uprobes alike.)
 * Syscalls come from the raw sys_enter/sys_exit tracepoints (tp_btf or raw_tp flavour), so neither
 * kprobes nor tracefs are needed.
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
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define MSG_PEEK 2

const volatile __u32 targ_tgid = 0;
const volatile __u32 targ_self = 0;            /* the tracer's own process: never traced */
const volatile __u32 targ_nports = 0;
const volatile __u16 targ_ports[SE_MAX_PORT_FILTERS] = {};
const volatile __s32 targ_nr[HTTP_SC_MAX] = {}; /* syscall number of each enum http_syscall, -1: none */

enum sock_class {
	SOCK_HTTP = 1,
	SOCK_OTHER = 2,
};

/* A call in progress on a thread, from sys_enter (or the uprobe) to sys_exit (or the uretprobe). */
struct active_call {
	__u64 buf;                   /* buffer, or iovec array for the vectored calls */
	__u64 ssl;                   /* TLS: the SSL *; 0 for syscalls */
	__u64 readbytes;             /* TLS _ex variants: size_t * for the bytes moved */
	__u32 fd;
	__u32 iovcnt;                /* 0: buf is a plain buffer */
	__u8 sc;                     /* enum http_syscall, 0 for TLS */
	__u8 dir;                    /* enum http_data_dir */
	__u8 _pad[6];
};

/* A stream to classify: a socket's bytes, or the TLS plain text of a socket (or SSL session). */
struct class_key {
	__u64 conn_id;
	__u64 tls;
};

struct http_scratch {
	struct http_event hdr;
	__u8 data[SE_HTTP_DATA_MAX * 2]; /* twice the copy limit so variable offsets verify */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SE_HTTP_ACTIVE_MAX);
	__type(key, __u32);          /* tid */
	__type(value, struct active_call);
} active_sys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SE_HTTP_ACTIVE_MAX);
	__type(key, __u32);          /* tid inside SSL_read/SSL_write */
	__type(value, struct active_call);
} active_tls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_HTTP_CONN_MAX);
	__type(key, struct class_key);
	__type(value, __u8);         /* enum sock_class */
} sock_class SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SE_HTTP_CONN_MAX);
	__type(key, __u64);          /* SSL * */
	__type(value, __u64);        /* struct sock * it reads and writes through */
} tls_sock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SE_HTTP_RINGBUF_BYTES);
} http_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HTTP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} http_stats SEC(".maps");

/* Keep the contract types in BTF even where no map names them. */
const enum http_trace_limits _http_limits_unused __attribute__((unused)) = SE_HTTP_DATA_MAX;
const enum http_event_kind _http_kind_unused __attribute__((unused)) = HTTP_EV_DATA;
const enum http_data_dir _http_dir_unused __attribute__((unused)) = HTTP_DIR_RECV;
const enum http_data_source _http_source_unused __attribute__((unused)) = HTTP_SRC_SYSCALL;
const enum http_syscall _http_syscall_unused __attribute__((unused)) = HTTP_SC_READ;
const enum http_trace_stat _http_stat_unused __attribute__((unused)) = HTTP_STAT_EVENTS;
const struct http_event _http_event_unused __attribute__((unused)) = {};

static __always_inline bool port_allowed(__u16 sport, __u16 dport)
{
	if (targ_nports == 0)
		return true;
	for (int i = 0; i < SE_MAX_PORT_FILTERS; i++) {
		if (i >= targ_nports)
			break;
		if (targ_ports[i] == sport || targ_ports[i] == dport)
			return true;
	}
	return false;
}

static __always_inline bool tgid_wanted(__u32 tgid)
{
	if (tgid == targ_self)
		return false;
	return !targ_tgid || tgid == targ_tgid;
}

/* The TCP socket behind a file descriptor of the current process, or NULL. */
static __always_inline struct sock *tcp_sock_of_fd(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;

	if (!fds || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return NULL;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	return sk;
}

/* Does a stream start like HTTP/1.x: a method and a space, or "HTTP/1."? */
static __always_inline bool looks_http(const __u8 *d, __u32 n)
{
	if (n < 4)
		return false;
	if (d[0] == 'H' && d[1] == 'T' && d[2] == 'T' && d[3] == 'P')
		return true;
#define START4(a, b, c, e) (d[0] == (a) && d[1] == (b) && d[2] == (c) && d[3] == (e))
	return START4('G', 'E', 'T', ' ') || START4('P', 'O', 'S', 'T') || START4('P', 'U', 'T', ' ') ||
	       START4('H', 'E', 'A', 'D') || START4('D', 'E', 'L', 'E') || START4('P', 'A', 'T', 'C') ||
	       START4('O', 'P', 'T', 'I') || START4('C', 'O', 'N', 'N') || START4('T', 'R', 'A', 'C');
#undef START4
}

/*
 * Copy the part of [from, to) of the call's data that lies in one piece of it (the bytes [start, start +
 * plen) of the call, at user address ptr) to s->data + dst + (its offset from `from`).
 */
static __always_inline void copy_overlap(struct http_scratch *s, __u64 ptr, __u64 start, __u64 plen, __u64 from,
					 __u64 to, __u32 dst)
{
	__u64 lo = start > from ? start : from;
	__u64 hi = start + plen < to ? start + plen : to;

	if (lo >= hi)
		return;
	__u32 n = hi - lo;
	__u32 at = dst + (__u32)(lo - from);
	asm volatile("" : "+r"(n));
	if (n > SE_HTTP_DATA_MAX)
		n = SE_HTTP_DATA_MAX;
	at &= SE_HTTP_DATA_MAX - 1;
	bpf_probe_read_user(s->data + at, n, (const void *)(ptr + (lo - start)));
}

/*
 * Copy what a call moved (len bytes) into s->data: all of it when it fits in SE_HTTP_DATA_MAX, else its
 * first SE_HTTP_DATA_MAX - SE_HTTP_TAIL bytes then its last SE_HTTP_TAIL. Returns bytes copied; *tail
 * says how many of them are the call's last bytes.
 */
static __always_inline __u32 copy_data(struct http_scratch *s, const struct active_call *c, __u32 len, __u16 *tail)
{
	__u32 head = len, tl = 0;

	*tail = 0;
	if (c->sc == HTTP_SC_SENDFILE)
		return 0;
	if (len > SE_HTTP_DATA_MAX) {
		head = SE_HTTP_DATA_MAX - SE_HTTP_TAIL;
		tl = SE_HTTP_TAIL;
	}
	if (!c->iovcnt) {
		copy_overlap(s, c->buf, 0, len, 0, head, 0);
		if (tl)
			copy_overlap(s, c->buf, 0, len, len - tl, len, head);
	} else {
		__u64 pos = 0;
		for (int i = 0; i < SE_HTTP_MAX_IOV; i++) {
			struct iovec iov;

			if (i >= c->iovcnt || pos >= len)
				break;
			if (bpf_probe_read_user(&iov, sizeof(iov), (const struct iovec *)c->buf + i))
				break;
			copy_overlap(s, (__u64)iov.iov_base, pos, iov.iov_len, 0, head, 0);
			if (tl)
				copy_overlap(s, (__u64)iov.iov_base, pos, iov.iov_len, len - tl, len, head);
			pos += iov.iov_len;
		}
		if (pos < len) {  /* more iovec entries than copied: the head ends where the copy did */
			if (pos < head)
				head = pos;
			tl = 0;
		}
	}
	*tail = tl;
	return head + tl;
}

/* Ship one call that moved `len` bytes on connection `conn_id` (the socket, or the SSL session). */
static __always_inline void emit(const struct active_call *c, __u32 len, const struct sock *sk, __u64 conn_id,
				 __u8 source)
{
	__u32 zero = 0;
	struct class_key key = { .conn_id = conn_id, .tls = source == HTTP_SRC_TLS };
	__u8 *cls = bpf_map_lookup_elem(&sock_class, &key);

	if (cls && *cls == SOCK_OTHER) {
		percpu_inc(&http_stats, HTTP_STAT_SKIPPED);
		return;
	}
	struct http_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return;
	struct http_event *e = &s->hdr;
	__builtin_memset(e, 0, sizeof(*e));
	if (sk) {
		FILL_TUPLE(e, sk);
		if (!port_allowed(e->sport, e->dport))
			return;
	} else if (targ_nports) {
		return;  /* a TLS session whose socket is unknown cannot be matched to a port */
	}
	__u16 tail = 0;
	__u32 copied = copy_data(s, c, len, &tail);
	if (!cls && c->sc != HTTP_SC_SENDFILE && copied >= 4) {
		/* fewer than 4 bytes: shipped unclassified, the next call decides */
		__u8 v = looks_http(s->data, copied) ? SOCK_HTTP : SOCK_OTHER;
		bpf_map_update_elem(&sock_class, &key, &v, BPF_ANY);
		if (v == SOCK_OTHER) {
			percpu_inc(&http_stats, HTTP_STAT_SKIPPED);
			return;
		}
	}
	if (!cls && c->sc == HTTP_SC_SENDFILE)
		return;  /* file data on a socket never seen: not an HTTP stream we follow */

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->conn_id = conn_id;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->len = len;
	e->copied = copied;
	e->kind = HTTP_EV_DATA;
	e->dir = c->dir;
	e->source = source;
	e->syscall = c->sc;
	e->tail = tail;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (len > copied && c->sc != HTTP_SC_SENDFILE)
		percpu_inc(&http_stats, HTTP_STAT_TRUNCATED);

	__u64 size = sizeof(*e) + copied;
	asm volatile("" : "+r"(size));
	if (size > sizeof(*s))
		size = sizeof(*s);
	if (bpf_ringbuf_output(&http_events, s, size, 0)) {
		percpu_inc(&http_stats, HTTP_STAT_LOST);
		return;
	}
	percpu_inc(&http_stats, HTTP_STAT_EVENTS);
}

/* ---- system calls ---- */

/* The call a thread is inside (active_sys: a syscall; active_tls: SSL_read/SSL_write), kept from its entry
 * for its exit. A full map drops the call and counts it. */
static __always_inline void call_enter(void *active, __u32 tid, const struct active_call *c)
{
	if (bpf_map_update_elem(active, &tid, c, BPF_ANY))
		percpu_inc(&http_stats, HTTP_STAT_ACTIVE_FULL);
}

/* At the exit: the thread's call, taken out of the map into call; false when there is none. */
static __always_inline bool call_exit(void *active, __u32 tid, struct active_call *call)
{
	struct active_call *c = bpf_map_lookup_elem(active, &tid);

	if (!c)
		return false;
	*call = *c;
	bpf_map_delete_elem(active, &tid);
	return true;
}

static __always_inline __u8 syscall_of(long id)
{
	/* Unrolled: targ_nr is read-only data, so the verifier sees constants. */
	for (int i = 1; i < HTTP_SC_MAX; i++)
		if (targ_nr[i] == id)
			return i;
	return 0;
}

static __always_inline int on_sys_enter(struct pt_regs *regs, long id)
{
	__u8 sc = syscall_of(id);
	if (!sc)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tgid_wanted(pid_tgid >> 32))
		return 0;

	struct active_call c = {};
	c.sc = sc;
	c.dir = (sc == HTTP_SC_READ || sc == HTTP_SC_READV || sc == HTTP_SC_RECVFROM || sc == HTTP_SC_RECVMSG)
			? HTTP_DIR_RECV : HTTP_DIR_SEND;
	if (sc == HTTP_SC_SENDFILE) {
		c.fd = (__u32)PT_REGS_PARM1_CORE_SYSCALL(regs);  /* out_fd */
	} else if (sc == HTTP_SC_RECVMSG || sc == HTTP_SC_SENDMSG) {
		struct user_msghdr msg;
		if (sc == HTTP_SC_RECVMSG && (PT_REGS_PARM3_CORE_SYSCALL(regs) & MSG_PEEK))
			return 0;  /* peeked bytes are read again later */
		c.fd = (__u32)PT_REGS_PARM1_CORE_SYSCALL(regs);
		if (bpf_probe_read_user(&msg, sizeof(msg), (const void *)PT_REGS_PARM2_CORE_SYSCALL(regs)))
			return 0;
		c.buf = (__u64)msg.msg_iov;
		c.iovcnt = msg.msg_iovlen;
		if (!c.iovcnt)
			return 0;
	} else {
		if (sc == HTTP_SC_RECVFROM && (PT_REGS_PARM4_CORE_SYSCALL(regs) & MSG_PEEK))
			return 0;  /* e.g. nginx peeks one byte to tell TLS from plain HTTP */
		c.fd = (__u32)PT_REGS_PARM1_CORE_SYSCALL(regs);
		c.buf = PT_REGS_PARM2_CORE_SYSCALL(regs);
		if (sc == HTTP_SC_READV || sc == HTTP_SC_WRITEV) {
			c.iovcnt = (__u32)PT_REGS_PARM3_CORE_SYSCALL(regs);
			if (!c.iovcnt)
				return 0;
		}
	}
	call_enter(&active_sys, (__u32)pid_tgid, &c);
	return 0;
}

static __always_inline int on_sys_exit(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct active_call call;
	if (!call_exit(&active_sys, tid, &call))
		return 0;
	if (ret <= 0)
		return 0;

	struct sock *sk = tcp_sock_of_fd(call.fd);
	if (!sk)
		return 0;
	__u64 sock_id = (__u64)sk;

	/* Inside SSL_read/SSL_write: this is the session's socket; its bytes are cipher text. */
	struct active_call *tls = bpf_map_lookup_elem(&active_tls, &tid);
	if (tls) {
		__u64 ssl = tls->ssl;
		bpf_map_update_elem(&tls_sock, &ssl, &sock_id, BPF_ANY);
		return 0;
	}
	emit(&call, (__u32)ret, sk, sock_id, HTTP_SRC_SYSCALL);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(http_sys_enter_btf, struct pt_regs *regs, long id)
{
	return on_sys_enter(regs, id);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(http_sys_exit_btf, struct pt_regs *regs, long ret)
{
	return on_sys_exit(ret);
}

SEC("raw_tp/sys_enter")
int BPF_PROG(http_sys_enter_raw, struct pt_regs *regs, long id)
{
	return on_sys_enter(regs, id);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(http_sys_exit_raw, struct pt_regs *regs, long ret)
{
	return on_sys_exit(ret);
}

/* ---- socket close ---- */

static __always_inline int on_state_change(struct sock *sk, int newstate)
{
	if (newstate != TCP_CLOSE)
		return 0;
	struct class_key key = { .conn_id = (__u64)sk, .tls = 0 };
	struct class_key tls_key = { .conn_id = (__u64)sk, .tls = 1 };
	__u8 *cls = bpf_map_lookup_elem(&sock_class, &key);
	__u8 *tls_cls = bpf_map_lookup_elem(&sock_class, &tls_key);
	bool http = (cls && *cls == SOCK_HTTP) || (tls_cls && *tls_cls == SOCK_HTTP);

	if (cls)
		bpf_map_delete_elem(&sock_class, &key);
	if (tls_cls)
		bpf_map_delete_elem(&sock_class, &tls_key);
	if (!http)
		return 0;

	struct http_event *e = bpf_ringbuf_reserve(&http_events, sizeof(*e), 0);
	if (!e) {
		percpu_inc(&http_stats, HTTP_STAT_LOST);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	FILL_TUPLE(e, sk);
	e->ts_ns = bpf_ktime_get_ns();
	e->conn_id = (__u64)sk;
	e->kind = HTTP_EV_CLOSE;
	e->source = (tls_cls && *tls_cls == SOCK_HTTP) ? HTTP_SRC_TLS : HTTP_SRC_SYSCALL;
	bpf_ringbuf_submit(e, 0);
	percpu_inc(&http_stats, HTTP_STAT_EVENTS);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(http_state_btf, struct sock *sk, int oldstate, int newstate)
{
	return on_state_change(sk, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(http_state_raw, struct sock *sk, int oldstate, int newstate)
{
	return on_state_change(sk, newstate);
}

/* ---- OpenSSL ---- */

static __always_inline int tls_enter(void *ssl, void *buf, void *readbytes, __u8 dir)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tgid_wanted(pid_tgid >> 32))
		return 0;
	struct active_call c = {};
	c.ssl = (__u64)ssl;
	c.buf = (__u64)buf;
	c.readbytes = (__u64)readbytes;
	c.dir = dir;
	call_enter(&active_tls, (__u32)pid_tgid, &c);
	return 0;
}

static __always_inline int tls_exit(long ret)
{
	struct active_call call;
	if (!call_exit(&active_tls, (__u32)bpf_get_current_pid_tgid(), &call))
		return 0;

	__u64 moved = 0;
	if (call.readbytes) {       /* SSL_read_ex/SSL_write_ex: 1 on success, the size in *readbytes */
		if (ret != 1 || bpf_probe_read_user(&moved, sizeof(moved), (const void *)call.readbytes))
			return 0;
	} else {
		if (ret <= 0)
			return 0;
		moved = ret;
	}
	if (!moved)
		return 0;

	__u64 ssl = call.ssl;
	__u64 *skp = bpf_map_lookup_elem(&tls_sock, &ssl);
	struct sock *sk = skp ? (struct sock *)*skp : NULL;
	__u64 conn_id = skp ? *skp : ssl;
	emit(&call, moved > 0xffffffffULL ? 0xffffffffU : (__u32)moved, sk, conn_id, HTTP_SRC_TLS);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_enter, void *ssl, void *buf, int num)
{
	return tls_enter(ssl, buf, NULL, HTTP_DIR_RECV);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return tls_enter(ssl, buf, readbytes, HTTP_DIR_RECV);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_enter, void *ssl, const void *buf, int num)
{
	return tls_enter(ssl, (void *)buf, NULL, HTTP_DIR_SEND);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return tls_enter(ssl, (void *)buf, written, HTTP_DIR_SEND);
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_exit, long ret)
{
	return tls_exit((int)ret);  /* every hooked function returns int: the upper half of rax is junk */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Benchmark helper (bench/_serverside.py): softirq time on one CPU, per vector, split by whether the
 * task it interrupted is in one cgroup. Without CONFIG_IRQ_TIME_ACCOUNTING the kernel charges softirq
 * work to whichever task was current: a server process (then it is already in that cgroup's
 * usage_usec), or idle, ksoftirqd or an unrelated process (then no figure shows it as the server's).
 * Only the target CPU writes, so plain adds suffice; atomics anyway, they cost nothing here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define NR_VEC 10

const volatile __u32 target_cpu = 0;
const volatile __u64 target_cgroup_id = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} entered_ns SEC(".maps");

/* index vec * 2 + 1 when the interrupted task is in the target cgroup, vec * 2 otherwise */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_VEC * 2);
	__type(key, __u32);
	__type(value, __u64);
} softirq_ns SEC(".maps");

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry, unsigned int vec)
{
	__u32 zero = 0;
	__u64 *t;

	if (bpf_get_smp_processor_id() != target_cpu)
		return 0;
	t = bpf_map_lookup_elem(&entered_ns, &zero);
	if (t)
		*t = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirq_exit, unsigned int vec)
{
	__u32 zero = 0, idx;
	__u64 *t, *sum;

	if (bpf_get_smp_processor_id() != target_cpu || vec >= NR_VEC)
		return 0;
	t = bpf_map_lookup_elem(&entered_ns, &zero);
	if (!t || !*t)
		return 0;
	idx = vec * 2 + (bpf_get_current_cgroup_id() == target_cgroup_id ? 1 : 0);
	sum = bpf_map_lookup_elem(&softirq_ns, &idx);
	if (sum)
		__sync_fetch_and_add(sum, bpf_ktime_get_ns() - *t);
	*t = 0;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

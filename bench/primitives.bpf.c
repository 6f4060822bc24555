// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * What the building blocks of tc_ingress cost on this machine: one TC program per primitive, each run
 * through BPF_PROG_TEST_RUN by bench/primitives.py next to an empty program (the floor).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct key40 { __u8 b[40]; };   /* the size of struct flow_key (in-flight map) */
struct key72 { __u8 b[72]; };   /* the size of struct http_route_key (route hash) */
struct val56 { __u8 b[56]; };   /* the size of struct inflight */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key40);
	__type(value, struct val56);
} hash40 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct key72);
	__type(value, __u32);
} hash72 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct key40);
	__type(value, struct val56);
} lru40 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} percpu SEC(".maps");

__u32 counter;

SEC("tc") int empty(struct __sk_buff *skb) { return 0; }

SEC("tc") int ktime_get_ns(struct __sk_buff *skb) { return bpf_ktime_get_ns() & 0; }

SEC("tc") int skb_load_bytes_8(struct __sk_buff *skb)
{
	__u64 b;

	return bpf_skb_load_bytes(skb, 54, &b, sizeof(b)) & 0;
}

SEC("tc") int skb_load_bytes_64(struct __sk_buff *skb)
{
	__u64 b[8];

	return bpf_skb_load_bytes(skb, 54, b, sizeof(b)) & 0;
}

SEC("tc") int percpu_array_inc(struct __sk_buff *skb)
{
	__u32 k = 3;
	__u64 *v = bpf_map_lookup_elem(&percpu, &k);

	if (v)
		*v += 1;
	return 0;
}

SEC("tc") int array_atomic_add(struct __sk_buff *skb)
{
	__u32 k = 3;
	__u64 *v = bpf_map_lookup_elem(&array, &k);

	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

SEC("tc") int hash_lookup_key40(struct __sk_buff *skb)
{
	struct key40 k = {};

	return bpf_map_lookup_elem(&hash40, &k) ? 0 : 1;
}

SEC("tc") int hash_lookup_key72(struct __sk_buff *skb)
{
	struct key72 k = {};

	return bpf_map_lookup_elem(&hash72, &k) ? 0 : 1;
}

SEC("tc") int lru_lookup_key40(struct __sk_buff *skb)
{
	struct key40 k = {};

	return bpf_map_lookup_elem(&lru40, &k) ? 0 : 1;
}

SEC("tc") int lru_update_existing(struct __sk_buff *skb)
{
	struct key40 k = {};
	struct val56 v = {};

	return bpf_map_update_elem(&lru40, &k, &v, BPF_ANY) ? 1 : 0;
}

/* A new key each run, deleted again: what a request then its response cost if the entry is not kept. */
SEC("tc") int lru_insert_delete(struct __sk_buff *skb)
{
	struct key40 k = {};
	struct val56 v = {};
	__u32 n = ++counter;

	__builtin_memcpy(&k.b[4], &n, sizeof(n));
	if (bpf_map_update_elem(&lru40, &k, &v, BPF_ANY))
		return 1;
	return bpf_map_delete_elem(&lru40, &k) ? 1 : 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Small helpers shared by the BPF programs. */
#ifndef SENTINEL_MAPS_BPF_H
#define SENTINEL_MAPS_BPF_H

#include <bpf/bpf_helpers.h>

/* Bump a per-CPU counter; a missing slot is ignored (the data plane never fails on statistics). */
static __always_inline void percpu_inc(void *map, __u32 idx)
{
	__u64 *val = bpf_map_lookup_elem(map, &idx);

	if (val)
		*val += 1;
}

#endif /* SENTINEL_MAPS_BPF_H */

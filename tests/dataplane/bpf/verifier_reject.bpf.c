// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test fixture: reads packet bytes without a bounds check, which the verifier must reject. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tc")
int unchecked_read(struct __sk_buff *skb)
{
	__u8 *data = (__u8 *)(long)skb->data;

	return data[20];
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

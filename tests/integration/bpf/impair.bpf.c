// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * A lossy, duplicating link for tests (tc netem is not built into this project's CI kernel): attached at
 * a client's egress, it drops LOSS_PCT percent of its IPv4 TCP data segments and sends DUP_PCT percent
 * twice. A dropped segment makes later ones arrive out of order, and the client's retransmissions and
 * the duplicates arrive after the server took those bytes. The copy is sent marked, so it is not
 * impaired again when it passes this hook.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define LOSS_PCT 8
#define DUP_PCT 8
#define COPY_MARK 0x1e57

SEC("tc")
int impair(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct tcphdr *th;
	__u32 mark, r;

	if (skb->mark == COPY_MARK || (void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->protocol != IPPROTO_TCP || ip->ihl != 5)
		return TC_ACT_OK;
	th = (void *)(ip + 1);
	if ((void *)(th + 1) > end || bpf_ntohs(ip->tot_len) <= sizeof(*ip) + th->doff * 4)
		return TC_ACT_OK; /* bare ACKs and handshakes pass: only data is impaired */
	r = bpf_get_prandom_u32() % 100;
	if (r < LOSS_PCT)
		return TC_ACT_SHOT;
	if (r < LOSS_PCT + DUP_PCT) {
		mark = skb->mark;
		skb->mark = COPY_MARK;
		bpf_clone_redirect(skb, skb->ifindex, 0);
		skb->mark = mark;
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

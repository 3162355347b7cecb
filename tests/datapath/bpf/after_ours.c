// An observer after ours on a TC hook (tests/datapath/test_packet_untouched.py): for TCP
// segments to `port` (set before load) of 1000 bytes or more, how many, and the largest and
// smallest linear part among them.
#include "common.h"  // retina_agent/bpf: build.py puts it on the include path

#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>

const volatile u16 port = 0;

// 0: TCP segments to port, 1: the largest linear part among them, 2: the smallest
RETINA_MAP(BPF_MAP_TYPE_ARRAY, u32, u64, 3) linear SEC(".maps");

SEC("tc")
int after_ours(struct __sk_buff *skb)
{
    struct iphdr ip;
    u16 dport;
    if (skb->protocol != __builtin_bswap16(ETH_P_IP)
        || bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0
        || ip.protocol != IPPROTO_TCP
        || bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4 + 2, &dport, 2) < 0
        || dport != __builtin_bswap16(port) || skb->len < 1000)
        return TC_ACT_UNSPEC;
    u64 head = skb->data_end - skb->data;
    u32 k = 0;
    u64 *v = bpf_map_lookup_elem(&linear, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
    k = 1;
    v = bpf_map_lookup_elem(&linear, &k);
    if (v && head > *v)
        *v = head;
    k = 2;
    v = bpf_map_lookup_elem(&linear, &k);
    if (v && (*v == 0 || head < *v))
        *v = head;
    return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";

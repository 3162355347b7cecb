// Another owner's TC programs (a CNI such as Cilium), to test coexistence with ours: each
// counts the UDP packets to one port (set before load) that pass its hook, and returns
// TC_ACT_UNSPEC (TCX_NEXT), so whatever follows it runs too.
#include "common.h"  // retina_agent/bpf: build.py puts it on the include path

#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>

const volatile u16 port = 0;

RETINA_MAP(BPF_MAP_TYPE_ARRAY, u32, u64, 1) seen_tcx SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_ARRAY, u32, u64, 1) seen_cls SEC(".maps");

static __always_inline int count(struct __sk_buff *skb, int cls)
{
    struct iphdr ip;
    u16 dport;
    if (skb->protocol != __builtin_bswap16(ETH_P_IP)
        || bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0
        || ip.protocol != IPPROTO_UDP
        || bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4 + 2, &dport, 2) < 0
        || dport != __builtin_bswap16(port))
        return TC_ACT_UNSPEC;
    u32 zero = 0;
    u64 *v = bpf_map_lookup_elem(cls ? (void *)&seen_cls : (void *)&seen_tcx, &zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    return TC_ACT_UNSPEC;
}

SEC("tc") int foreign_tcx(struct __sk_buff *skb) { return count(skb, 0); }
SEC("tc") int foreign_cls(struct __sk_buff *skb) { return count(skb, 1); }

char LICENSE[] SEC("license") = "GPL";

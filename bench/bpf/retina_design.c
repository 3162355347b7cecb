// The Retina-design row of the benchmark: a socket filter on an AF_PACKET/ETH_P_ALL raw
// socket per pod veth, counting packets and bytes by direction (as Retina's packetforward).
#include "common.h"  // retina_agent/bpf: build.py puts it on the include path

#include <linux/if_packet.h>

struct pf_value {
    u64 packets;
    u64 bytes;
};

RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pf_value, 2) retina_pf SEC(".maps");

SEC("socket")
int retina_packetforward(struct __sk_buff *skb)
{
    u32 dir = skb->pkt_type == PACKET_OUTGOING ? 1 : 0;
    struct pf_value *v = bpf_map_lookup_elem(&retina_pf, &dir);
    if (v) {
        v->packets += 1;
        v->bytes += skb->len;
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

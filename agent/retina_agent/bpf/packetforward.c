// packetforward: packets and bytes entering and leaving the node, counted at TC on the
// node's ports (its NICs and the host side of every pod veth). Per-CPU array: no locks,
// no per-packet event to user space. Returns TC_ACT_UNSPEC so other TC programs still run.
#include <uapi/linux/pkt_cls.h>

struct pf_value {
    u64 packets;
    u64 bytes;
};

BPF_PERCPU_ARRAY(pf_counts, struct pf_value, 2);  // 0 = ingress, 1 = egress

static __always_inline int count(struct __sk_buff *skb, u32 direction)
{
    struct pf_value *v = pf_counts.lookup(&direction);
    if (v) {
        v->packets += 1;
        v->bytes += skb->len;
    }
    return TC_ACT_UNSPEC;
}

int pf_ingress(struct __sk_buff *skb) { return count(skb, 0); }
int pf_egress(struct __sk_buff *skb) { return count(skb, 1); }

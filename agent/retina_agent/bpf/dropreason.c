// dropreason: every packet the kernel drops, by the kernel's own drop reason, from the
// skb:kfree_skb tracepoint. The record's field offsets come from tracefs (tracepoint.h); the
// sk_buff offsets from the running kernel's BTF (never from headers, which may belong to
// another kernel), all as constants set before load (-1: not known on this kernel).
//
// Direction, from the packet itself: sk_buff.skb_iif is the interface a packet was received
// on (set on every receive, also into a pod's namespace through its veth) and 0 for a packet
// the host or a pod generated. Received -> ingress, generated -> egress; without BTF (no
// offset) -> unknown. The drop_dir_* values come from the plugin (DIRECTIONS).
#include "common.h"
#include "tracepoint.h"

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

const volatile u32 tp_skbaddr_off = 0;
const volatile u32 tp_protocol_off = 0;
const volatile u32 tp_reason_off = 0;
const volatile u8 have_reason = 0;         // kernels before 5.17: no reason field
const volatile s32 last_not_a_drop = -1;   // reasons up to this one are not drops (-1: none)
const volatile u32 drop_dir_ingress = 0;
const volatile u32 drop_dir_egress = 1;
const volatile u32 drop_dir_unknown = 2;
const volatile s32 skb_len_off = -1;
const volatile s32 skb_iif_off = -1;
const volatile s32 skb_head_off = -1;
const volatile s32 skb_network_header_off = -1;
const volatile u8 pod_level = 0;

struct drop_value {
    u64 packets;
    u64 bytes;
};

struct drop_key {
    u32 reason;
    u32 direction;
};

RETINA_MAP(BPF_MAP_TYPE_PERCPU_HASH, struct drop_key, struct drop_value, 1024) drop_counts SEC(".maps");

// One sk_buff member at a BTF offset (-1: unknown); 1 when dst was read.
#define SKB_READ(dst, skb, off) \
    ((off) >= 0 && bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(skb) + (off)) == 0)

// Pod-level: the dropped packet's addresses, read from its IP header at
// skb->head + skb->network_header (offsets from BTF), for flows touching an IP of interest.
#include "pod_filter.h"

struct drop_flow_key {
    u8 src[16];
    u8 dst[16];
    u32 reason;
    u8 proto;
    u8 pad[3];
};

RETINA_MAP(BPF_MAP_TYPE_LRU_PERCPU_HASH, struct drop_flow_key, struct drop_value, 16384) drop_flows SEC(".maps");

static __always_inline void count_flow(u16 protocol, u32 reason, u32 len, unsigned char *head, u16 nh)
{
    if (!head || nh == 0xffff)
        return;  // no network header set (not an IP packet yet)
    struct drop_flow_key key = {};
    key.reason = reason;
    if (protocol == ETH_P_IP) {
        struct iphdr ip;
        if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) < 0 || ip.version != 4)
            return;
        v4mapped(key.src, &ip.saddr);
        v4mapped(key.dst, &ip.daddr);
        key.proto = ip.protocol;
    } else if (protocol == ETH_P_IPV6) {
        struct ipv6hdr ip6;
        if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) < 0 || ip6.version != 6)
            return;
        __builtin_memcpy(key.src, &ip6.saddr, 16);
        __builtin_memcpy(key.dst, &ip6.daddr, 16);
        key.proto = ip6.nexthdr;
    } else {
        return;
    }
    if (!either_of_interest(key.src, key.dst))
        return;
    struct drop_value zero = {};
    struct drop_value *v = lookup_or_try_init(&drop_flows, &key, &zero);
    if (v) {
        v->packets += 1;
        v->bytes += len;
    }
}

SEC("tracepoint")
int on_kfree_skb(void *ctx)
{
    struct tp_record rec;
    if (tp_copy(&rec, ctx) < 0)
        return 0;
    u32 reason = 0xffffffff;  // kernels before 5.17: no reason field
    if (have_reason) {
        reason = TP_FIELD(u32, &rec, tp_reason_off);
        if ((s32)reason <= last_not_a_drop)  // SKB_NOT_DROPPED_YET, SKB_CONSUMED: not drops
            return 0;
    }
    void *skb = (void *)TP_FIELD(u64, &rec, tp_skbaddr_off);
    struct drop_key key = {.reason = reason, .direction = drop_dir_unknown};
    int iif = 0;
    if (SKB_READ(iif, skb, skb_iif_off))
        key.direction = iif ? drop_dir_ingress : drop_dir_egress;
    struct drop_value zero = {};
    struct drop_value *v = lookup_or_try_init(&drop_counts, &key, &zero);
    if (!v)
        return 0;
    v->packets += 1;
    u32 len = 0;
    if (SKB_READ(len, skb, skb_len_off))
        v->bytes += len;
    if (pod_level) {
        unsigned char *head = NULL;
        u16 nh = 0xffff;
        if (SKB_READ(head, skb, skb_head_off) && SKB_READ(nh, skb, skb_network_header_off))
            count_flow(TP_FIELD(u16, &rec, tp_protocol_off), reason, len, head, nh);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

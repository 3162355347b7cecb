// dropreason: every packet the kernel drops, by the kernel's own drop reason, from the
// skb:kfree_skb tracepoint. The args struct is generated from tracefs; SKB_LEN_OFFSET from
// the running kernel's BTF (never from headers, which may belong to another kernel).
//
// Direction, from the packet itself: sk_buff.skb_iif is the interface a packet was received
// on (set on every receive, also into a pod's namespace through its veth) and 0 for a packet
// the host or a pod generated. Received -> ingress, generated -> egress; without BTF (no
// offset) -> unknown. DROP_DIR_* come from Python as -D flags.
TP_STRUCT

struct drop_value {
    u64 packets;
    u64 bytes;
};

struct drop_key {
    u32 reason;
    u32 direction;
};

BPF_PERCPU_HASH(drop_counts, struct drop_key, struct drop_value, 1024);

// The sk_buff fields read here (offsets from BTF, each optional) are fetched with ONE
// bpf_probe_read_kernel of the span that holds them (88 bytes on 6.x), not a call per field:
// each call costs more than the copy. SKB_READ(dst, offset) is 1 when dst was read.
#ifdef SKB_LEN_OFFSET
#define F_LEN_LO SKB_LEN_OFFSET
#define F_LEN_HI (SKB_LEN_OFFSET + 4)
#else
#define F_LEN_LO 0xffff
#define F_LEN_HI 0
#endif
#ifdef SKB_IIF_OFFSET
#define F_IIF_LO SKB_IIF_OFFSET
#define F_IIF_HI (SKB_IIF_OFFSET + 4)
#else
#define F_IIF_LO 0xffff
#define F_IIF_HI 0
#endif
#if defined(POD_LEVEL) && defined(SKB_HEAD_OFFSET) && defined(SKB_NETWORK_HEADER_OFFSET)
#define F_FLOW_LO (SKB_HEAD_OFFSET < SKB_NETWORK_HEADER_OFFSET ? SKB_HEAD_OFFSET : SKB_NETWORK_HEADER_OFFSET)
#define F_FLOW_HI (SKB_HEAD_OFFSET + 8 > SKB_NETWORK_HEADER_OFFSET + 2 ? SKB_HEAD_OFFSET + 8 : SKB_NETWORK_HEADER_OFFSET + 2)
#else
#define F_FLOW_LO 0xffff
#define F_FLOW_HI 0
#endif
#define MIN2(a, b) ((a) < (b) ? (a) : (b))
#define MAX2(a, b) ((a) > (b) ? (a) : (b))
#define SPAN_LO (MIN2(MIN2(F_LEN_LO, F_IIF_LO), F_FLOW_LO) & ~7)  // 8-aligned: stack loads are
#define SPAN_HI MAX2(MAX2(F_LEN_HI, F_IIF_HI), F_FLOW_HI)         // checked for alignment
#if SPAN_HI > SPAN_LO && SPAN_HI - SPAN_LO <= 256
#define SKB_SPAN_WORDS ((SPAN_HI - SPAN_LO + 7) / 8)
#define SKB_FETCH(skb)                                                                       \
    u64 span[SKB_SPAN_WORDS];                                                                  \
    int fetched = bpf_probe_read_kernel(span, sizeof(span), (void *)(skb) + SPAN_LO) == 0
#define SKB_READ(dst, off) (fetched && ((dst) = *(typeof(dst) *)((u8 *)span + (off) - SPAN_LO), 1))
#else  // fields too far apart (or none): one read each
#define SKB_FETCH(skb) void *fetch_from = (void *)(skb); (void)fetch_from
#define SKB_READ(dst, off) (bpf_probe_read_kernel(&(dst), sizeof(dst), fetch_from + (off)) == 0)
#endif

#ifdef POD_LEVEL
// Pod-level: the dropped packet's addresses, read from its IP header at
// skb->head + skb->network_header (offsets from BTF), for flows touching an IP of interest.
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#include "pod_filter.h"

struct drop_flow_key {
    u8 src[16];
    u8 dst[16];
    u32 reason;
    u8 proto;
    u8 pad[3];
};

BPF_TABLE("lru_percpu_hash", struct drop_flow_key, struct drop_value, drop_flows, 16384);

static __always_inline void count_flow(struct tp_args *args, u32 reason, u32 len,
                                       unsigned char *head, u16 nh)
{
    if (!head || nh == 0xffff)
        return;  // no network header set (not an IP packet yet)
    struct drop_flow_key key = {};
    key.reason = reason;
    if (args->protocol == ETH_P_IP) {
        struct iphdr ip;
        if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) < 0 || ip.version != 4)
            return;
        v4mapped(key.src, &ip.saddr);
        v4mapped(key.dst, &ip.daddr);
        key.proto = ip.protocol;
    } else if (args->protocol == ETH_P_IPV6) {
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
    struct drop_value *v = drop_flows.lookup_or_try_init(&key, &zero);
    if (v) {
        v->packets += 1;
        v->bytes += len;
    }
}
#endif

int on_kfree_skb(struct tp_args *args)
{
#ifdef HAVE_REASON
    u32 reason = args->reason;
#ifdef LAST_NOT_A_DROP
    if (reason <= LAST_NOT_A_DROP)  // SKB_NOT_DROPPED_YET, SKB_CONSUMED: not drops
        return 0;
#endif
#else
    u32 reason = 0xffffffff;  // kernels before 5.17: no reason field
#endif
    struct drop_key key = {.reason = reason, .direction = DROP_DIR_UNKNOWN};
    SKB_FETCH(args->skbaddr);
#ifdef SKB_IIF_OFFSET
    int iif = 0;
    if (SKB_READ(iif, SKB_IIF_OFFSET))
        key.direction = iif ? DROP_DIR_INGRESS : DROP_DIR_EGRESS;
#endif
    struct drop_value zero = {};
    struct drop_value *v = drop_counts.lookup_or_try_init(&key, &zero);
    if (!v)
        return 0;
    v->packets += 1;
    u32 len = 0;
#ifdef SKB_LEN_OFFSET
    if (SKB_READ(len, SKB_LEN_OFFSET))
        v->bytes += len;
#endif
#if defined(POD_LEVEL) && defined(SKB_HEAD_OFFSET) && defined(SKB_NETWORK_HEADER_OFFSET)
    unsigned char *head = NULL;
    u16 nh = 0xffff;
    if (SKB_READ(head, SKB_HEAD_OFFSET) && SKB_READ(nh, SKB_NETWORK_HEADER_OFFSET))
        count_flow(args, reason, len, head, nh);
#endif
    return 0;
}

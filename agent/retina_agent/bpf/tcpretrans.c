// tcpretrans: TCP retransmissions on the node from the tcp:tcp_retransmit_skb tracepoint,
// counted per address family in a per-CPU array. The record's field offsets come from
// tracefs (tracepoint.h). With pod_level, also per (source, destination) address pair
// touching an IP of interest.
#include "common.h"
#include "tracepoint.h"
#include "pod_filter.h"

const volatile u32 tp_family_off = 0;
const volatile u32 tp_saddr_off = 0;
const volatile u32 tp_daddr_off = 0;
const volatile u32 tp_saddr_v6_off = 0;
const volatile u32 tp_daddr_v6_off = 0;
const volatile u8 pod_level = 0;

RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, u64, 2) retrans_counts SEC(".maps");  // 0 = IPv4, 1 = IPv6

struct pair_key {
    u8 src[16];
    u8 dst[16];
};

struct pair_value {
    u64 count;
};

RETINA_MAP(BPF_MAP_TYPE_LRU_PERCPU_HASH, struct pair_key, struct pair_value, 16384) retrans_pairs SEC(".maps");

static __always_inline void count_pair(struct tp_record *rec, u16 family)
{
    struct pair_key key = {};
    if (family == 10) {
        __builtin_memcpy(key.src, TP_FIELD_PTR(rec, tp_saddr_v6_off), 16);
        __builtin_memcpy(key.dst, TP_FIELD_PTR(rec, tp_daddr_v6_off), 16);
    } else {
        v4mapped(key.src, TP_FIELD_PTR(rec, tp_saddr_off));
        v4mapped(key.dst, TP_FIELD_PTR(rec, tp_daddr_off));
    }
    if (!either_of_interest(key.src, key.dst))
        return;
    struct pair_value zero = {};
    struct pair_value *v = lookup_or_try_init(&retrans_pairs, &key, &zero);
    if (v)
        v->count += 1;
}

SEC("tracepoint")
int on_tcp_retransmit_skb(void *ctx)
{
    struct tp_record rec;
    if (tp_copy(&rec, ctx) < 0)
        return 0;
    u16 family = TP_FIELD(u16, &rec, tp_family_off);
    u32 slot = family == 10 /* AF_INET6 */ ? 1 : 0;
    u64 *v = bpf_map_lookup_elem(&retrans_counts, &slot);
    if (v)
        *v += 1;
    if (pod_level)
        count_pair(&rec, family);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

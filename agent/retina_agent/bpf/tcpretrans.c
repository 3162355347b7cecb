// tcpretrans: TCP retransmissions on the node from the tcp:tcp_retransmit_skb tracepoint,
// counted per address family in a per-CPU array. The args struct is generated from tracefs.
// With POD_LEVEL, also per (source, destination) address pair touching an IP of interest.
TP_STRUCT

BPF_PERCPU_ARRAY(retrans_counts, u64, 2);  // 0 = IPv4, 1 = IPv6

#ifdef POD_LEVEL
#include "pod_filter.h"

struct pair_key {
    u8 src[16];
    u8 dst[16];
};

struct pair_value {
    u64 count;
};

BPF_TABLE("lru_percpu_hash", struct pair_key, struct pair_value, retrans_pairs, 16384);

static __always_inline void count_pair(struct tp_args *args)
{
    struct pair_key key = {};
    if (args->family == 10) {
        __builtin_memcpy(key.src, args->saddr_v6, 16);
        __builtin_memcpy(key.dst, args->daddr_v6, 16);
    } else {
        v4mapped(key.src, args->saddr);
        v4mapped(key.dst, args->daddr);
    }
    if (!either_of_interest(key.src, key.dst))
        return;
    struct pair_value zero = {};
    struct pair_value *v = retrans_pairs.lookup_or_try_init(&key, &zero);
    if (v)
        v->count += 1;
}
#endif

int on_tcp_retransmit_skb(struct tp_args *args)
{
    u32 slot = args->family == 10 /* AF_INET6 */ ? 1 : 0;
    u64 *v = retrans_counts.lookup(&slot);
    if (v)
        *v += 1;
#ifdef POD_LEVEL
    count_pair(args);
#endif
    return 0;
}

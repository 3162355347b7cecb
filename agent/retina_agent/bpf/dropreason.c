// dropreason: every packet the kernel drops, by the kernel's own drop reason, from the
// skb:kfree_skb tracepoint. The args struct is generated from tracefs; SKB_LEN_OFFSET from
// the running kernel's BTF (never from headers, which may belong to another kernel).
TP_STRUCT

struct drop_value {
    u64 packets;
    u64 bytes;
};

BPF_PERCPU_HASH(drop_counts, u32, struct drop_value, 1024);

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
    struct drop_value zero = {};
    struct drop_value *v = drop_counts.lookup_or_try_init(&reason, &zero);
    if (!v)
        return 0;
    v->packets += 1;
#ifdef SKB_LEN_OFFSET
    u32 len = 0;
    bpf_probe_read_kernel(&len, sizeof(len), (void *)args->skbaddr + SKB_LEN_OFFSET);
    v->bytes += len;
#endif
    return 0;
}

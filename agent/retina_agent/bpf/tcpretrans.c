// tcpretrans: TCP retransmissions on the node from the tcp:tcp_retransmit_skb tracepoint,
// counted per address family in a per-CPU array. The args struct is generated from tracefs.
TP_STRUCT

BPF_PERCPU_ARRAY(retrans_counts, u64, 2);  // 0 = IPv4, 1 = IPv6

int on_tcp_retransmit_skb(struct tp_args *args)
{
    u32 slot = args->family == 10 /* AF_INET6 */ ? 1 : 0;
    u64 *v = retrans_counts.lookup(&slot);
    if (v)
        *v += 1;
    return 0;
}

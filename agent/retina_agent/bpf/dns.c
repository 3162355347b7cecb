// dns: DNS over UDP and TCP, IPv4 and IPv6, parsed at TC on the node's ports.
// Every message is counted once: at the ingress of the port it enters by, or at egress when
// the node itself sent it (ingress_ifindex == 0); forwarded packets are skipped at egress.
// Requests are remembered (client address, port, DNS id) in an LRU map so the response gives
// the query-to-response latency, kept as a log2 histogram in microseconds.
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

#define DNS_PORT 53
#define MAX_LABELS 40
#define LATENCY_SLOTS 32
#define SWAP16(x) __builtin_bswap16(x)

struct dns_header {
    u16 id;
    u16 flags;
    u16 qdcount;
    u16 ancount;
    u16 nscount;
    u16 arcount;
};

struct inflight_key {
    u8 addr[16];
    u16 port;
    u16 id;
    u32 pad;
};

struct rcode_key {
    u16 qtype;
    u8 rcode;
    u8 pad;
};

struct latency {
    u64 slots[LATENCY_SLOTS];  // slot s: latency < 2^s microseconds
    u64 sum_ns;
    u64 count;
};

BPF_PERCPU_ARRAY(dns_totals, u64, 2);  // 0 = requests, 1 = responses
BPF_PERCPU_HASH(dns_responses, struct rcode_key, u64, 1024);
BPF_PERCPU_ARRAY(dns_latency, struct latency, 1);
BPF_TABLE("lru_hash", struct inflight_key, u64, dns_inflight, 16384);

#ifdef POD_LEVEL
// Pod-level: messages to or from a pod of interest go to user space whole (up to 512 bytes),
// where the query name and answers are parsed. Events lost to a full buffer are counted.
#define DNS_CAPTURE 512
#include "pod_filter.h"

struct dns_event {
    u8 src[16];
    u8 dst[16];
    u16 sport;
    u16 dport;
    u16 len;
    u16 pad;
    u8 data[DNS_CAPTURE];
};

BPF_RINGBUF_OUTPUT(dns_events, 64);  // 64 pages
BPF_PERCPU_ARRAY(dns_lost, u64, 1);

static __always_inline void emit(struct __sk_buff *skb, int v4, u8 *src, u8 *dst, u16 sport,
                                 u16 dport, u32 dnsoff)
{
    u8 s16[16], d16[16];
    if (v4) {
        v4mapped(s16, src);
        v4mapped(d16, dst);
    } else {
        __builtin_memcpy(s16, src, 16);
        __builtin_memcpy(d16, dst, 16);
    }
    if (!either_of_interest(s16, d16))
        return;
    struct dns_event *ev = dns_events.ringbuf_reserve(sizeof(struct dns_event));
    if (!ev) {
        u32 zero = 0;
        u64 *lost = dns_lost.lookup(&zero);
        if (lost)
            *lost += 1;
        return;
    }
    __builtin_memcpy(ev->src, s16, 16);
    __builtin_memcpy(ev->dst, d16, 16);
    ev->sport = sport;
    ev->dport = dport;
    u32 n = skb->len > dnsoff ? skb->len - dnsoff : 0;
    if (n > DNS_CAPTURE)
        n = DNS_CAPTURE;
    ev->len = 0;
    if (n >= 12 && bpf_skb_load_bytes(skb, dnsoff, ev->data, n) == 0)
        ev->len = n;
    dns_events.ringbuf_submit(ev, 0);
}
#endif

static __always_inline void bump(u32 slot)
{
    u64 *v = dns_totals.lookup(&slot);
    if (v)
        *v += 1;
}

static __always_inline int handle(struct __sk_buff *skb, int egress)
{
    if (egress && skb->ingress_ifindex != 0)
        return TC_ACT_UNSPEC;

    u32 off = ETH_HLEN, l4off;
    u8 l4proto, src[16] = {}, dst[16] = {};
    int v4 = 0;
    if (skb->protocol == SWAP16(ETH_P_IP)) {
        v4 = 1;
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
            return TC_ACT_UNSPEC;
        if (ip.frag_off & SWAP16(0x1fff))  // not the first fragment
            return TC_ACT_UNSPEC;
        l4proto = ip.protocol;
        l4off = off + ip.ihl * 4;
        __builtin_memcpy(src, &ip.saddr, 4);
        __builtin_memcpy(dst, &ip.daddr, 4);
    } else if (skb->protocol == SWAP16(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
            return TC_ACT_UNSPEC;
        l4proto = ip6.nexthdr;
        l4off = off + sizeof(ip6);
        __builtin_memcpy(src, &ip6.saddr, 16);
        __builtin_memcpy(dst, &ip6.daddr, 16);
    } else {
        return TC_ACT_UNSPEC;
    }

    u16 ports[2];
    u32 dnsoff;
    if (l4proto == IPPROTO_UDP) {
        if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) < 0)
            return TC_ACT_UNSPEC;
        dnsoff = l4off + 8;
    } else if (l4proto == IPPROTO_TCP) {
        struct tcphdr tcp;
        if (bpf_skb_load_bytes(skb, l4off, &tcp, sizeof(tcp)) < 0)
            return TC_ACT_UNSPEC;
        ports[0] = tcp.source;
        ports[1] = tcp.dest;
        dnsoff = l4off + tcp.doff * 4 + 2;  // DNS over TCP: 2-byte length prefix
    } else {
        return TC_ACT_UNSPEC;
    }
    u16 sport = SWAP16(ports[0]), dport = SWAP16(ports[1]);
    if (sport != DNS_PORT && dport != DNS_PORT)
        return TC_ACT_UNSPEC;

    struct dns_header h;
    if (bpf_skb_load_bytes(skb, dnsoff, &h, sizeof(h)) < 0)
        return TC_ACT_UNSPEC;  // no DNS payload (TCP handshake, ACKs)
    u16 flags = SWAP16(h.flags);
    int response = flags >> 15;
    if (response ? sport != DNS_PORT : dport != DNS_PORT)
        return TC_ACT_UNSPEC;

    struct inflight_key key = {};
    key.id = h.id;
    if (response) {
        __builtin_memcpy(key.addr, dst, 16);
        key.port = dport;
    } else {
        __builtin_memcpy(key.addr, src, 16);
        key.port = sport;
    }
    u64 now = bpf_ktime_get_ns();
#ifdef POD_LEVEL
    emit(skb, v4, src, dst, sport, dport, dnsoff);
#endif
    if (!response) {
        bump(0);
        dns_inflight.update(&key, &now);
        return TC_ACT_UNSPEC;
    }
    bump(1);

    // The question's type follows its name: skip the labels.
    u32 pos = dnsoff + sizeof(h);
    u16 qtype = 0;
    u8 len = 1;
#pragma unroll
    for (int i = 0; i < MAX_LABELS; i++) {
        if (bpf_skb_load_bytes(skb, pos, &len, 1) < 0 || len == 0 || len > 63)
            break;
        pos += len + 1;
    }
    if (len == 0 && bpf_skb_load_bytes(skb, pos + 1, &qtype, 2) == 0)
        qtype = SWAP16(qtype);
    else
        qtype = 0;
    struct rcode_key rk = {.qtype = qtype, .rcode = flags & 0xf};
    u64 zero = 0, *n = dns_responses.lookup_or_try_init(&rk, &zero);
    if (n)
        *n += 1;

    u64 *sent = dns_inflight.lookup(&key);
    if (!sent)
        return TC_ACT_UNSPEC;
    u64 delta = now - *sent;
    dns_inflight.delete(&key);
    u32 zero_idx = 0;
    struct latency *lat = dns_latency.lookup(&zero_idx);
    if (!lat)
        return TC_ACT_UNSPEC;
    u64 us = delta / 1000;
    u32 slot = 0;
#pragma unroll
    for (int i = 0; i < LATENCY_SLOTS - 1; i++) {
        if (us >= (1ULL << i))
            slot = i + 1;
    }
    if (slot < LATENCY_SLOTS)
        lat->slots[slot] += 1;
    lat->sum_ns += delta;
    lat->count += 1;
    return TC_ACT_UNSPEC;
}

int dns_ingress(struct __sk_buff *skb) { return handle(skb, 0); }
int dns_egress(struct __sk_buff *skb) { return handle(skb, 1); }

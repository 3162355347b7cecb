// packetparser: pod-level flows. TC on the host side of every pod veth (and optionally the
// node's NICs). Packets, bytes and TCP flags are aggregated in the kernel per flow key
// (addresses, ports, protocol, direction) in a per-CPU LRU hash; Python harvests every
// interval. Only flows with an address of interest (pods in the selected namespaces, kept in
// the ips_of_interest map by the agent) are counted. Never changes a verdict: TC_ACT_UNSPEC.
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

#define SWAP16(x) __builtin_bswap16(x)
#define N_FLAGS 10  // FIN SYN SYNACK ACK RST PSH URG ECE CWR NS, as Retina

#include "pod_filter.h"

struct flow_key {
    u8 src[16];
    u8 dst[16];
    u16 sport;
    u16 dport;
    u8 proto;
    u8 direction;  // 0 = into the pod (TC egress of the host veth), 1 = out of the pod
    u16 pad;
};

struct flow_value {
    u64 packets;
    u64 bytes;
    u64 flags[N_FLAGS];
};

struct settings {
    u32 filter_enabled;  // 0: count every flow (bypassLookupIPOfInterest)
    u32 pad;
};

BPF_TABLE("lru_percpu_hash", struct flow_key, struct flow_value, flows, MAX_FLOWS);
BPF_ARRAY(settings_map, struct settings, 1);

static __always_inline int interesting(struct flow_key *k)
{
    u32 zero = 0;
    struct settings *s = settings_map.lookup(&zero);
    if (s && !s->filter_enabled)
        return 1;
    return either_of_interest(k->src, k->dst);
}

static __always_inline int handle(struct __sk_buff *skb, u8 direction)
{
    struct flow_key key = {};
    u32 l4off;
    key.direction = direction;
    if (skb->protocol == SWAP16(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
            return TC_ACT_UNSPEC;
        v4mapped(key.src, &ip.saddr);
        v4mapped(key.dst, &ip.daddr);
        key.proto = ip.protocol;
        l4off = ETH_HLEN + ip.ihl * 4;
        if (ip.frag_off & SWAP16(0x1fff))
            key.proto = 0;  // later fragments: no ports
    } else if (skb->protocol == SWAP16(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
            return TC_ACT_UNSPEC;
        __builtin_memcpy(key.src, &ip6.saddr, 16);
        __builtin_memcpy(key.dst, &ip6.daddr, 16);
        key.proto = ip6.nexthdr;
        l4off = ETH_HLEN + sizeof(ip6);
    } else {
        return TC_ACT_UNSPEC;
    }
    if (!interesting(&key))
        return TC_ACT_UNSPEC;

    u8 tcpflags = 0, has_tcp = 0;
    if (key.proto == IPPROTO_TCP) {
        u8 hdr[14];
        if (bpf_skb_load_bytes(skb, l4off, hdr, sizeof(hdr)) == 0) {
            key.sport = SWAP16(*(u16 *)&hdr[0]);
            key.dport = SWAP16(*(u16 *)&hdr[2]);
            tcpflags = hdr[13];
            has_tcp = hdr[12] & 1;  // NS bit lives in the data-offset byte
            has_tcp |= 2;
        }
    } else if (key.proto == IPPROTO_UDP) {
        u16 ports[2];
        if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)) == 0) {
            key.sport = SWAP16(ports[0]);
            key.dport = SWAP16(ports[1]);
        }
    }

    struct flow_value *v = flows.lookup(&key);
    if (!v) {
        struct flow_value zero = {};
        flows.update(&key, &zero);
        v = flows.lookup(&key);
        if (!v)
            return TC_ACT_UNSPEC;
    }
    v->packets += 1;
    v->bytes += skb->len;
    if (has_tcp & 2) {
        if (tcpflags & 0x01) v->flags[0] += 1;                       // FIN
        if ((tcpflags & 0x12) == 0x02) v->flags[1] += 1;             // SYN
        if ((tcpflags & 0x12) == 0x12) v->flags[2] += 1;             // SYN-ACK
        if ((tcpflags & 0x12) == 0x10) v->flags[3] += 1;             // ACK (not SYN-ACK)
        if (tcpflags & 0x04) v->flags[4] += 1;                       // RST
        if (tcpflags & 0x08) v->flags[5] += 1;                       // PSH
        if (tcpflags & 0x20) v->flags[6] += 1;                       // URG
        if (tcpflags & 0x40) v->flags[7] += 1;                       // ECE
        if (tcpflags & 0x80) v->flags[8] += 1;                       // CWR
        if (has_tcp & 1) v->flags[9] += 1;                           // NS
    }
    return TC_ACT_UNSPEC;
}

// On the host side of a pod's veth, TC ingress sees what the pod sent, egress what it gets.
int pp_ingress(struct __sk_buff *skb) { return handle(skb, 1); }
int pp_egress(struct __sk_buff *skb) { return handle(skb, 0); }

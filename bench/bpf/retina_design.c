// The Retina-design rows of the benchmark: socket filters on AF_PACKET/ETH_P_ALL raw sockets
// per pod veth, as Retina's agent runs its basic plugins.
//   retina_packetforward: packets and bytes by direction (pkg/plugin/packetforward).
//   retina_dns: Retina's dns plugin is Inspektor Gadget's DNS tracer, a socket filter on a raw
//     socket in the host network namespace that sees every packet of every interface and sends
//     each DNS message (port 53, UDP) to user space. Re-created here: the same parse and port
//     test per packet, and for a DNS message its header and addresses to a ring buffer.
#include "common.h"  // retina_agent/bpf: build.py puts it on the include path

#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

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

#define DNS_PORT 53

struct dns_event {
    u8 src[16];
    u8 dst[16];
    u16 sport;
    u16 dport;
    u16 id;
    u16 flags;
    u8 pkt_type;
    u8 v6;
    u16 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 64 * 4096);
} retina_dns_events SEC(".maps");

SEC("socket")
int retina_dns(struct __sk_buff *skb)
{
    struct dns_event ev = {};
    u32 l4;
    if (skb->protocol == __builtin_bswap16(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_UDP)
            return 0;
        __builtin_memcpy(ev.src + 12, &ip.saddr, 4);
        __builtin_memcpy(ev.dst + 12, &ip.daddr, 4);
        l4 = ETH_HLEN + ip.ihl * 4;
    } else if (skb->protocol == __builtin_bswap16(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_UDP)
            return 0;
        __builtin_memcpy(ev.src, &ip6.saddr, 16);
        __builtin_memcpy(ev.dst, &ip6.daddr, 16);
        ev.v6 = 1;
        l4 = ETH_HLEN + sizeof(ip6);
    } else {
        return 0;
    }
    struct udphdr udp;
    if (bpf_skb_load_bytes(skb, l4, &udp, sizeof(udp)) < 0)
        return 0;
    ev.sport = __builtin_bswap16(udp.source);
    ev.dport = __builtin_bswap16(udp.dest);
    if (ev.sport != DNS_PORT && ev.dport != DNS_PORT)
        return 0;
    u16 header[2];  // id, flags
    if (bpf_skb_load_bytes(skb, l4 + sizeof(udp), header, sizeof(header)) < 0)
        return 0;
    ev.id = __builtin_bswap16(header[0]);
    ev.flags = __builtin_bswap16(header[1]);
    ev.pkt_type = skb->pkt_type;
    bpf_ringbuf_output(&retina_dns_events, &ev, sizeof(ev), 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

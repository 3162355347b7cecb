// latency: the node's connections to the Kubernetes API server, timed in the kernel at TC on
// the node's ports. Handshake: SYN out -> SYN-ACK in. Request: first payload out with nothing
// pending -> first payload in. Histograms use Retina's linear buckets of 1 ms from 0.5 ms
// (slot k holds latencies <= k + 0.5 ms; slot 64 is the overflow). Requests still pending
// after a while are counted as unanswered by the agent.
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

#define SWAP16(x) __builtin_bswap16(x)
#define SLOTS 65

struct server_key {
    u8 addr[16];
    u16 port;
    u16 pad;
};

struct conn_key {
    u8 server[16];
    u16 server_port;
    u16 client_port;
};

struct histogram {
    u64 slots[SLOTS];
    u64 sum_ns;
    u64 count;
};

BPF_HASH(apiservers, struct server_key, u8, 64);
BPF_TABLE("lru_hash", struct conn_key, u64, handshakes, 4096);
BPF_TABLE("lru_hash", struct conn_key, u64, pending, 4096);
BPF_PERCPU_ARRAY(latency_hist, struct histogram, 2);  // 0 = request, 1 = handshake

static __always_inline void observe(u32 which, u64 delta_ns)
{
    struct histogram *h = latency_hist.lookup(&which);
    if (!h)
        return;
    u64 slot = (delta_ns / 1000 + 499) / 1000;
    if (slot >= SLOTS)
        slot = SLOTS - 1;
    h->slots[slot] += 1;
    h->sum_ns += delta_ns;
    h->count += 1;
}

static __always_inline int handle(struct __sk_buff *skb, int egress)
{
    if (egress && skb->ingress_ifindex != 0)
        return TC_ACT_UNSPEC;  // forwarded, not the node's own connection
    struct conn_key key = {};
    u8 src[16] = {}, dst[16] = {};
    u32 l4off, ip_payload;
    if (skb->protocol == SWAP16(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_TCP)
            return TC_ACT_UNSPEC;
        src[10] = src[11] = dst[10] = dst[11] = 0xff;
        __builtin_memcpy(src + 12, &ip.saddr, 4);
        __builtin_memcpy(dst + 12, &ip.daddr, 4);
        l4off = ETH_HLEN + ip.ihl * 4;
        ip_payload = SWAP16(ip.tot_len) - ip.ihl * 4;
    } else if (skb->protocol == SWAP16(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_TCP)
            return TC_ACT_UNSPEC;
        __builtin_memcpy(src, &ip6.saddr, 16);
        __builtin_memcpy(dst, &ip6.daddr, 16);
        l4off = ETH_HLEN + sizeof(ip6);
        ip_payload = SWAP16(ip6.payload_len);
    } else {
        return TC_ACT_UNSPEC;
    }
    struct tcphdr tcp;
    if (bpf_skb_load_bytes(skb, l4off, &tcp, sizeof(tcp)) < 0)
        return TC_ACT_UNSPEC;
    struct server_key server = {};
    if (egress) {  // node -> server
        __builtin_memcpy(server.addr, dst, 16);
        server.port = SWAP16(tcp.dest);
        key.client_port = SWAP16(tcp.source);
    } else {       // server -> node
        __builtin_memcpy(server.addr, src, 16);
        server.port = SWAP16(tcp.source);
        key.client_port = SWAP16(tcp.dest);
    }
    if (!apiservers.lookup(&server))
        return TC_ACT_UNSPEC;
    __builtin_memcpy(key.server, server.addr, 16);
    key.server_port = server.port;
    u64 now = bpf_ktime_get_ns();
    u32 payload = ip_payload > tcp.doff * 4u ? ip_payload - tcp.doff * 4u : 0;
    if (egress) {
        if (tcp.syn && !tcp.ack) {
            handshakes.update(&key, &now);
        } else if (payload && !pending.lookup(&key)) {
            pending.update(&key, &now);
        }
        return TC_ACT_UNSPEC;
    }
    if (tcp.syn && tcp.ack) {
        u64 *sent = handshakes.lookup(&key);
        if (sent) {
            observe(1, now - *sent);
            handshakes.delete(&key);
        }
    } else if (payload) {
        u64 *sent = pending.lookup(&key);
        if (sent) {
            observe(0, now - *sent);
            pending.delete(&key);
        }
    }
    return TC_ACT_UNSPEC;
}

int lat_ingress(struct __sk_buff *skb) { return handle(skb, 0); }
int lat_egress(struct __sk_buff *skb) { return handle(skb, 1); }

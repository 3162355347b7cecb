// datapath: ONE TC program per hook and direction for every TC plugin (packetforward, dns,
// packetparser, latency). Each packet is parsed once, with direct packet access (a copy to
// the stack only when its headers are not in the linear part; the packet is never changed),
// and that one parse feeds every plugin that is on for the interface.
//
// Which plugins run where is data, not code: dp_ifaces maps an ifindex to a bit per plugin
// (F_*), written by the agent from each plugin's interface selector and state. A plugin
// that fails or stops loses its bit; the others keep running. Plugins not enabled (or that
// failed to load) are off in the object's constants (feat_*, set before load): the verifier
// drops their code, and their maps are created with one entry.
//
// Sizes and bits shared with Python come from -D flags given at build time
// (retina_agent/bpf/datapath.py, build.py); nothing here is read from kernel-internal
// structs. Verdict: always TC_ACT_UNSPEC (TCX_NEXT).
#include "common.h"

#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#if !defined(F_PF) || !defined(F_DNS) || !defined(F_PP) || !defined(F_LAT) || !defined(MAX_IFACES)
#error "feature bits and sizes come from retina_agent/bpf/datapath.py (python -m retina_agent.bpf.build)"
#endif

// Which plugins are in this load (set before load; FEATURE_CONSTANTS in datapath.py).
const volatile u8 feat_pf = 0;
const volatile u8 feat_dns = 0;
const volatile u8 feat_pp = 0;
const volatile u8 feat_lat = 0;
const volatile u8 pod_level = 0;  // dns: pod-level events (packetparser is pod-level anyway)
const volatile u32 fast_flow_mask = 0;  // packetparser: fastFlows - 1 (a power of two); 0 slots: off
const volatile u32 fast_flow_bits = 0;  // log2(fastFlows)
const volatile u8 fast_flows_on = 0;

#define SWAP16(x) __builtin_bswap16(x)
// What runs for few packets (DNS messages, a flow's first packet, API server packets, headers
// outside the linear part) is marked RARELY(...), a hint to the compiler; the per-packet path
// jumps over it. (Cold code stays inline rather than a BPF-to-BPF call: one function per
// program is what the 5.10 and 6.1 verifiers were shown to accept.)
#define RARELY(x) __builtin_expect(!!(x), 0)
#define COLD static __always_inline

// ifindex -> F_* bits of the plugins on it. An array (the lookup is inlined: a bounds check and
// a load) for the usual indexes, a hash for the rare larger ones (a host with long pod churn).
RETINA_MAP(BPF_MAP_TYPE_ARRAY, u32, u32, MAX_IFACES) dp_ifaces SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_HASH, u32, u32, 4096) dp_ifaces_hi SEC(".maps");

static __always_inline u32 iface_features(u32 ifindex)
{
    u32 *bits;
    if (RARELY(ifindex >= MAX_IFACES)) {
        bits = bpf_map_lookup_elem(&dp_ifaces_hi, &ifindex);
        // not folded into the array's lookup below: a lookup call that may see either map
        // cannot be inlined by the verifier; the array's alone becomes a bounds check and a load
        asm volatile("" ::: "memory");
        return bits ? *bits : 0;
    }
    bits = bpf_map_lookup_elem(&dp_ifaces, &ifindex);
    return bits ? *bits : 0;
}

struct dp_settings {
    u32 sample_rate;     // 1-in-N of pod-level flow and DNS events (1: every one)
    u32 filter_enabled;  // 0: count every flow (bypassLookupIPOfInterest)
    u16 api_ports[4];    // latency: API server ports, a cheap test before the map lookup
};
RETINA_MAP(BPF_MAP_TYPE_ARRAY, u32, struct dp_settings, 1) dp_settings SEC(".maps");

// The packet's addresses, ports and protocol, laid out as packetparser's flow key: the parse
// writes them once and the flow lookup takes them as they are (no copy per packet). Five
// aligned 64-bit words: the fast flow table hashes and compares it a word at a time.
struct __attribute__((aligned(8))) flow_key {
    u8 src[16];  // IPv4 as ::ffff:a.b.c.d
    u8 dst[16];
    u16 sport;   // host byte order
    u16 dport;
    u8 proto;      // 0 for a later IPv4 fragment (no ports)
    u8 direction;  // 0 = into the pod (TC egress of the host veth), 1 = out of the pod
    u16 pad;
};

// What the one parse found.
struct pkt {
    struct flow_key t;
    u32 l4off;
    u32 ip_payload;  // bytes after the IP header
    u8 v4;
    u8 tcp;          // 1: a TCP header was read
    u8 tcpflags;
    u8 tcp_ns;
    u8 tcp_hlen;
};

static __always_inline u32 sample_rate(void)
{
    u32 zero = 0;
    struct dp_settings *s = bpf_map_lookup_elem(&dp_settings, &zero);
    return s && s->sample_rate > 1 ? s->sample_rate : 1;
}

// 1 when this event is one of the 1-in-rate kept.
static __always_inline int sampled(u32 rate)
{
    return rate <= 1 || bpf_get_prandom_u32() % rate == 0;
}

// ---------------------------------------------------------------------------- packetforward
struct pf_value {
    u64 packets;
    u64 bytes;
};
RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct pf_value, 2) pf_counts SEC(".maps");  // 0 = ingress, 1 = egress

static __always_inline void pf_count(struct __sk_buff *skb, u32 direction)
{
    struct pf_value *v = bpf_map_lookup_elem(&pf_counts, &direction);
    if (v) {
        v->packets += 1;
        v->bytes += skb->len;
    }
}

#include "pod_filter.h"

// ---------------------------------------------------------------------------------------- dns
// Every message is counted once: at the ingress of the port it enters by, or at egress when
// the node itself sent it (ingress_ifindex == 0). Requests are remembered (client address,
// port, DNS id) so the response gives the query-to-response latency (log2 histogram, us).
#define DNS_PORT 53
#define MAX_LABELS 40

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

struct dns_latency_value {
    u64 slots[DNS_LATENCY_SLOTS];  // slot s: latency < 2^s microseconds
    u64 sum_ns;
    u64 count;
};

RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, u64, 2) dns_totals SEC(".maps");  // 0 = requests, 1 = responses
RETINA_MAP(BPF_MAP_TYPE_PERCPU_HASH, struct rcode_key, u64, 1024) dns_responses SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct dns_latency_value, 1) dns_latency SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_LRU_HASH, struct inflight_key, u64, 16384) dns_inflight SEC(".maps");

struct dns_event {
    u8 src[16];
    u8 dst[16];
    u16 sport;
    u16 dport;
    u16 len;
    u16 weight;  // events this one stands for (the sampling rate when it was kept)
    u8 data[DNS_CAPTURE];
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 64 * 4096);  // 64 pages
} dns_events SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, u64, 1) dns_lost SEC(".maps");

// min(v, max) that the verifiers of 5.10 and 6.1 see as bounded where it is used. With plain C,
// clang may keep v unclamped on the stack and compare a reloaded copy: those verifiers bound the
// compared register only, not the stack slot the length is read from again ("R4 min value is
// negative" at bpf_skb_load_bytes). In one asm statement the clamp's result is a new value.
static __always_inline u64 at_most(u64 v, const u64 max)
{
    asm volatile("if %0 <= %1 goto +1\n\t%0 = %1" : "+r"(v) : "i"(max));
    return v;
}

static __always_inline void dns_emit(struct __sk_buff *skb, struct pkt *p, u32 dnsoff)
{
    u32 rate = sample_rate();
    if (!sampled(rate))
        return;
    if (!either_of_interest(p->t.src, p->t.dst))
        return;
    struct dns_event *ev = bpf_ringbuf_reserve(&dns_events, sizeof(struct dns_event), 0);
    if (!ev) {
        u32 zero = 0;
        u64 *lost = bpf_map_lookup_elem(&dns_lost, &zero);
        if (lost)
            *lost += 1;
        return;
    }
    __builtin_memcpy(ev->src, p->t.src, 16);
    __builtin_memcpy(ev->dst, p->t.dst, 16);
    ev->sport = p->t.sport;
    ev->dport = p->t.dport;
    ev->weight = rate;
    u64 n = at_most(skb->len > dnsoff ? skb->len - dnsoff : 0, DNS_CAPTURE);
    ev->len = 0;
    if (n >= 12 && bpf_skb_load_bytes(skb, dnsoff, ev->data, n) == 0)
        ev->len = n;
    bpf_ringbuf_submit(ev, 0);
}

static __always_inline void dns_bump(u32 slot)
{
    u64 *v = bpf_map_lookup_elem(&dns_totals, &slot);
    if (v)
        *v += 1;
}

// Only packets to or from port 53 get here: the DNS message is read with skb loads.
COLD void dns_handle(struct __sk_buff *skb, struct pkt *p, int egress)
{
    if (egress && skb->ingress_ifindex != 0)
        return;  // forwarded: counted at the ingress it came by
    u32 dnsoff;
    if (p->t.proto == IPPROTO_UDP)
        dnsoff = p->l4off + 8;
    else if (p->tcp)
        dnsoff = p->l4off + p->tcp_hlen + 2;  // DNS over TCP: 2-byte length prefix
    else
        return;
    struct dns_header h;
    if (bpf_skb_load_bytes(skb, dnsoff, &h, sizeof(h)) < 0)
        return;  // no DNS payload (TCP handshake, ACKs)
    u16 flags = SWAP16(h.flags);
    int response = flags >> 15;
    if (response ? p->t.sport != DNS_PORT : p->t.dport != DNS_PORT)
        return;

    struct inflight_key key = {};
    key.id = h.id;
    if (response) {
        __builtin_memcpy(key.addr, p->t.dst, 16);
        key.port = p->t.dport;
    } else {
        __builtin_memcpy(key.addr, p->t.src, 16);
        key.port = p->t.sport;
    }
    u64 now = bpf_ktime_get_ns();
    if (pod_level)
        dns_emit(skb, p, dnsoff);
    if (!response) {
        dns_bump(0);
        bpf_map_update_elem(&dns_inflight, &key, &now, BPF_ANY);
        return;
    }
    dns_bump(1);

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
    u64 zero = 0, *n = lookup_or_try_init(&dns_responses, &rk, &zero);
    if (n)
        *n += 1;

    u64 *sent = bpf_map_lookup_elem(&dns_inflight, &key);
    if (!sent)
        return;
    u64 delta = now - *sent;
    bpf_map_delete_elem(&dns_inflight, &key);
    u32 zero_idx = 0;
    struct dns_latency_value *lat = bpf_map_lookup_elem(&dns_latency, &zero_idx);
    if (!lat)
        return;
    u64 us = delta / 1000;
    u32 slot = 0;
#pragma unroll
    for (int i = 0; i < DNS_LATENCY_SLOTS - 1; i++) {
        if (us >= (1ULL << i))
            slot = i + 1;
    }
    if (slot < DNS_LATENCY_SLOTS)
        lat->slots[slot] += 1;
    lat->sum_ns += delta;
    lat->count += 1;
}

// ------------------------------------------------------------------------------ packetparser
// Pod-level flows: packets, bytes and TCP flags per flow key in a per-CPU LRU hash, for flows
// touching an IP of interest. With dataSamplingRate N, 1 packet in N is counted N times.
struct flow_value {
    u64 packets;
    u64 bytes;
    u64 flags[N_TCP_FLAGS];  // FIN SYN SYNACK ACK RST PSH URG ECE CWR NS, as Retina
};

RETINA_MAP(BPF_MAP_TYPE_LRU_PERCPU_HASH, struct flow_key, struct flow_value, 1) flows SEC(".maps");  // maxFlows, set before load

// The fast flow table: long flows are counted in an array slot indexed by a hash of their key,
// which the verifier inlines (a bounds check and a multiply), instead of in `flows`, whose
// lookup is a call that hashes the 40-byte key and walks a bucket (about half of pod level's
// cost per packet). The agent, not the kernel, puts a flow there: at a harvest, a busy flow of
// `flows` whose slot is free gets it (the same key in every CPU's copy), and a slot idle for a
// while is freed (podlevel/fastflows.py). The kernel only compares and counts, so a flow is
// counted in `flows` until it has a slot and in the slot after; the agent adds both.
//
// One plain array, not a per-CPU one: each CPU has its own run of slots (index = cpu * slots +
// slot; only that CPU's programs write it). The agent maps the array (BPF_F_MMAPABLE): it reads
// the placed slots' counters in place at a harvest (a per-CPU array had to be copied whole,
// every slot of every CPU), and writes a slot with plain stores in the order the kernel needs:
// the key while `used` is 0, then `used`; to free it, `used` 0 first, then the rest.
struct fast_flow {
    struct flow_key key;
    u32 used;  // 1: key is a flow the agent placed here
    u32 pad;
    struct flow_value v;
};
_Static_assert(sizeof(struct fast_flow) == 144, "fastflows.py's FastFlowSlot has the same layout");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, u32);
    __type(value, struct fast_flow);
    __uint(max_entries, 1);  // fastFlows x possible CPUs, set before load
} fast_flows SEC(".maps");

// Its slot: a multiply-xor hash of the key's five words (fastflows.py computes the same).
static __always_inline u32 fast_flow_slot(const struct flow_key *k)
{
    const u64 m = 0x9E3779B97F4A7C15ULL;
    const u64 *w = (const u64 *)k;
    u64 h = w[0] * m;
    h = (h ^ w[1]) * m;
    h = (h ^ w[2]) * m;
    h = (h ^ w[3]) * m;
    h = (h ^ w[4]) * m;
    return (u32)(h >> 40) & fast_flow_mask;
}

static __always_inline int same_flow(const struct flow_key *a, const struct flow_key *b)
{
    const u64 *x = (const u64 *)a, *y = (const u64 *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

// The flow's counters: its fast slot's when the agent placed it there, else its `flows` entry.
static __always_inline struct flow_value *flow_counters(struct flow_key *key)
{
    if (fast_flows_on) {
        // this CPU's run of slots (a TC program runs with migration off)
        u32 index = (bpf_get_smp_processor_id() << fast_flow_bits) | fast_flow_slot(key);
        struct fast_flow *f = bpf_map_lookup_elem(&fast_flows, &index);
        if (f && f->used && same_flow(&f->key, key))
            return &f->v;
    }
    return bpf_map_lookup_elem(&flows, key);
}

// A flow's first packet: counted only when it touches an IP of interest.
COLD struct flow_value *pp_new_flow(struct flow_key *key, struct dp_settings *s)
{
    if ((!s || s->filter_enabled) && !either_of_interest(key->src, key->dst))
        return NULL;
    struct flow_value fresh = {};
    bpf_map_update_elem(&flows, key, &fresh, BPF_ANY);
    return bpf_map_lookup_elem(&flows, key);
}

static __always_inline void pp_handle(struct __sk_buff *skb, struct pkt *p, u8 direction,
                                      struct dp_settings *s)
{
    u32 rate = s && s->sample_rate > 1 ? s->sample_rate : 1;
    if (!sampled(rate))
        return;
    struct flow_key *key = &p->t;
    key->direction = direction;
    // A known flow is counted at once: it touched an IP of interest when it was created, and
    // the agent deletes flows whose pods leave the selection (PacketParser.harvest). Only a
    // flow's first packet pays for the two IPs-of-interest lookups.
    struct flow_value *v = flow_counters(key);
    if (RARELY(!v)) {
        v = pp_new_flow(key, s);
        if (!v)
            return;
    }
    v->packets += rate;
    v->bytes += (u64)skb->len * rate;
    if (p->tcp) {
        u8 f = p->tcpflags;
        if (f & 0x01) v->flags[0] += rate;                    // FIN
        if ((f & 0x12) == 0x02) v->flags[1] += rate;          // SYN
        if ((f & 0x12) == 0x12) v->flags[2] += rate;          // SYN-ACK
        if ((f & 0x12) == 0x10) v->flags[3] += rate;          // ACK (not SYN-ACK)
        if (f & 0x04) v->flags[4] += rate;                    // RST
        if (f & 0x08) v->flags[5] += rate;                    // PSH
        if (f & 0x20) v->flags[6] += rate;                    // URG
        if (f & 0x40) v->flags[7] += rate;                    // ECE
        if (f & 0x80) v->flags[8] += rate;                    // CWR
        if (p->tcp_ns) v->flags[9] += rate;                   // NS
    }
}

// ----------------------------------------------------------------------------------- latency
// The node's connections to the Kubernetes API server. Handshake: SYN out -> SYN-ACK in.
// Request: first payload out with nothing pending -> first payload in. Linear 1 ms slots from
// 0.5 ms (slot k: <= k + 0.5 ms; the last is the overflow).
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

struct lat_histogram {
    u64 slots[LAT_SLOTS];
    u64 sum_ns;
    u64 count;
};

RETINA_MAP(BPF_MAP_TYPE_HASH, struct server_key, u8, 64) apiservers SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_LRU_HASH, struct conn_key, u64, 4096) handshakes SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_LRU_HASH, struct conn_key, u64, 4096) pending SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct lat_histogram, 2) latency_hist SEC(".maps");  // 0 = request, 1 = handshake

static __always_inline void lat_observe(u32 which, u64 delta_ns)
{
    struct lat_histogram *h = bpf_map_lookup_elem(&latency_hist, &which);
    if (!h)
        return;
    u64 slot = (delta_ns / 1000 + 499) / 1000;
    if (slot >= LAT_SLOTS)
        slot = LAT_SLOTS - 1;
    h->slots[slot] += 1;
    h->sum_ns += delta_ns;
    h->count += 1;
}

// A packet on an API server port: is it the node's connection to an API server?
COLD void lat_track(struct pkt *p, int egress, u16 port)
{
    struct server_key server = {};
    struct conn_key key = {};
    if (egress) {  // node -> server
        __builtin_memcpy(server.addr, p->t.dst, 16);
        key.client_port = p->t.sport;
    } else {       // server -> node
        __builtin_memcpy(server.addr, p->t.src, 16);
        key.client_port = p->t.dport;
    }
    server.port = port;
    if (!bpf_map_lookup_elem(&apiservers, &server))
        return;
    __builtin_memcpy(key.server, server.addr, 16);
    key.server_port = port;
    u64 now = bpf_ktime_get_ns();
    u32 payload = p->ip_payload > p->tcp_hlen ? p->ip_payload - p->tcp_hlen : 0;
    u8 syn = p->tcpflags & 0x02, ack = p->tcpflags & 0x10;
    if (egress) {
        if (syn && !ack)
            bpf_map_update_elem(&handshakes, &key, &now, BPF_ANY);
        else if (payload && !bpf_map_lookup_elem(&pending, &key))
            bpf_map_update_elem(&pending, &key, &now, BPF_ANY);
        return;
    }
    if (syn && ack) {
        u64 *sent = bpf_map_lookup_elem(&handshakes, &key);
        if (sent) {
            lat_observe(1, now - *sent);
            bpf_map_delete_elem(&handshakes, &key);
        }
    } else if (payload) {
        u64 *sent = bpf_map_lookup_elem(&pending, &key);
        if (sent) {
            lat_observe(0, now - *sent);
            bpf_map_delete_elem(&pending, &key);
        }
    }
}

static __always_inline void lat_handle(struct __sk_buff *skb, struct pkt *p, int egress,
                                       struct dp_settings *s)
{
    // Two compares and a port test before any map: the API server's port is one of at most
    // four, so the apiservers lookup runs only for packets on those ports.
    if (!s)
        return;
    u16 port = egress ? p->t.dport : p->t.sport;
    if (RARELY(port == s->api_ports[0] || port == s->api_ports[1] || port == s->api_ports[2]
               || port == s->api_ports[3])
        && !(egress && skb->ingress_ifindex != 0))  // forwarded: not the node's connection
        lat_track(p, egress, port);
}


// ------------------------------------------------------------------------------ the one parse
// Headers are read in place (direct packet access) when they are in the skb's linear part, as
// they are for packets from a local socket or a veth. Otherwise (a driver that leaves headers
// in page fragments) they are copied to the stack with bpf_skb_load_bytes. The packet is never
// pulled: bpf_skb_pull_data makes a cloned skb's head private (a copy of it for every TCP
// segment, whose clone TCP keeps for retransmission) and changes the packet that the programs
// after ours see. Only the bytes the plugins read are required: the IP header and the first
// 20 bytes of TCP or 8 of UDP, so a TCP segment whose head holds just its headers parses in
// place.
#define PARSE_OK 0
#define PARSE_NOT_IP -1
#define PARSE_COPY 1  // a header is not in the linear part

static __always_inline int take_v4(struct pkt *p, const struct iphdr *ip)
{
    u32 ihl = ip->ihl * 4;
    if (ihl < sizeof(*ip))
        return PARSE_NOT_IP;
    p->v4 = 1;
    p->t.proto = ip->protocol;
    if (ip->frag_off & SWAP16(0x1fff))
        p->t.proto = 0;  // later fragment: no L4 header
    // ::ffff:a.b.c.d (bytes 8..11 = 00 00 ff ff: one 32-bit store each)
    *(u32 *)(p->t.src + 8) = __builtin_bswap32(0x0000ffff);
    *(u32 *)(p->t.dst + 8) = __builtin_bswap32(0x0000ffff);
    __builtin_memcpy(p->t.src + 12, &ip->saddr, 4);
    __builtin_memcpy(p->t.dst + 12, &ip->daddr, 4);
    p->l4off = ETH_HLEN + ihl;
    u16 tot = SWAP16(ip->tot_len);
    p->ip_payload = tot > ihl ? tot - ihl : 0;
    return PARSE_OK;
}

static __always_inline void take_v6(struct pkt *p, const struct ipv6hdr *ip6)
{
    p->t.proto = ip6->nexthdr;
    __builtin_memcpy(p->t.src, &ip6->saddr, 16);
    __builtin_memcpy(p->t.dst, &ip6->daddr, 16);
    p->l4off = ETH_HLEN + sizeof(*ip6);
    p->ip_payload = SWAP16(ip6->payload_len);
}

static __always_inline void take_tcp(struct pkt *p, const struct tcphdr *tcp)
{
    p->t.sport = SWAP16(tcp->source);
    p->t.dport = SWAP16(tcp->dest);
    p->tcp = 1;
    p->tcpflags = ((const u8 *)tcp)[13];
    p->tcp_ns = ((const u8 *)tcp)[12] & 1;
    p->tcp_hlen = tcp->doff * 4;
}

static __always_inline void take_udp(struct pkt *p, const struct udphdr *udp)
{
    p->t.sport = SWAP16(udp->source);
    p->t.dport = SWAP16(udp->dest);
}

// In place. PARSE_COPY when a header the plugins read is past the linear part.
static __always_inline int parse_direct(struct __sk_buff *skb, struct pkt *p)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (skb->protocol == SWAP16(ETH_P_IP)) {
        struct iphdr *ip = data + ETH_HLEN;
        if ((void *)(ip + 1) > end)
            return PARSE_COPY;
        if (take_v4(p, ip) < 0)
            return PARSE_NOT_IP;
    } else if (skb->protocol == SWAP16(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data + ETH_HLEN;
        if ((void *)(ip6 + 1) > end)
            return PARSE_COPY;
        take_v6(p, ip6);
    } else {
        return PARSE_NOT_IP;
    }
    u32 l4off = p->l4off;
    if (l4off > ETH_HLEN + 60)  // cannot be (ihl <= 15 words); tells the verifier the bound
        return PARSE_OK;
    void *l4 = data + l4off;
    if (p->t.proto == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > end)
            return PARSE_COPY;
        take_tcp(p, tcp);
    } else if (p->t.proto == IPPROTO_UDP) {
        struct udphdr *udp = l4;
        if ((void *)(udp + 1) > end)
            return PARSE_COPY;
        take_udp(p, udp);
    }
    return PARSE_OK;
}

// Copies: for headers outside the linear part (rare). A packet too short for its L4 header
// keeps its addresses and protocol, without ports.
COLD int parse_copied(struct __sk_buff *skb, struct pkt *p)
{
    if (skb->protocol == SWAP16(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || take_v4(p, &ip) < 0)
            return PARSE_NOT_IP;
    } else if (skb->protocol == SWAP16(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
            return PARSE_NOT_IP;
        take_v6(p, &ip6);
    } else {
        return PARSE_NOT_IP;
    }
    if (p->t.proto == IPPROTO_TCP) {
        struct tcphdr tcp;
        if (bpf_skb_load_bytes(skb, p->l4off, &tcp, sizeof(tcp)) == 0)
            take_tcp(p, &tcp);
    } else if (p->t.proto == IPPROTO_UDP) {
        struct udphdr udp;
        if (bpf_skb_load_bytes(skb, p->l4off, &udp, sizeof(udp)) == 0)
            take_udp(p, &udp);
    }
    return PARSE_OK;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
    int r = parse_direct(skb, p);
    if (!RARELY(r == PARSE_COPY))
        return r;
    __builtin_memset(p, 0, sizeof(*p));
    return parse_copied(skb, p);
}

static __always_inline int handle(struct __sk_buff *skb, const int egress)
{
    u32 features = iface_features(skb->ifindex);
    if (!features)
        return TC_ACT_UNSPEC;
    if (feat_pf && (features & F_PF))
        pf_count(skb, egress);
    if (!(features & (F_DNS | F_PP | F_LAT)))
        return TC_ACT_UNSPEC;
    struct pkt p = {};
    if (parse(skb, &p) < 0)
        return TC_ACT_UNSPEC;
    if (RARELY(feat_dns && (features & F_DNS) && (p.t.sport == DNS_PORT || p.t.dport == DNS_PORT)))
        dns_handle(skb, &p, egress);
    u32 zero = 0;
    struct dp_settings *s = NULL;
    if (feat_pp || feat_lat)
        s = bpf_map_lookup_elem(&dp_settings, &zero);
    // On the host side of a pod's veth, TC ingress sees what the pod sent, egress what it gets.
    if (feat_pp && (features & F_PP))
        pp_handle(skb, &p, egress ? 0 : 1, s);
    if (feat_lat && (features & F_LAT) && p.tcp)
        lat_handle(skb, &p, egress, s);
    return TC_ACT_UNSPEC;
}

SEC("tc") int dp_ingress(struct __sk_buff *skb) { return handle(skb, 0); }
SEC("tc") int dp_egress(struct __sk_buff *skb) { return handle(skb, 1); }

char LICENSE[] SEC("license") = "GPL";

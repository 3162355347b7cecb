// dropreason: every packet the kernel drops, by the kernel's own drop reason, from the
// skb:kfree_skb tracepoint. The record's field offsets come from tracefs (tracepoint.h); the
// sk_buff offsets from the running kernel's BTF (never from headers, which may belong to
// another kernel), all as constants set before load (-1: not known on this kernel).
//
// Direction, from the packet itself: sk_buff.skb_iif is the interface a packet was received
// on (set on every receive, also into a pod's namespace through its veth) and 0 for a packet
// the host or a pod generated. Received -> ingress, generated -> egress; without BTF (no
// offset) -> unknown. The drop_dir_* values come from the plugin (DIRECTIONS).
#include "common.h"
#include "tracepoint.h"

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

const volatile u32 tp_skbaddr_off = 0;
const volatile u32 tp_protocol_off = 0;
const volatile u32 tp_reason_off = 0;
const volatile u8 have_reason = 0;         // kernels before 5.17: no reason field
const volatile s32 last_not_a_drop = -1;   // reasons up to this one are not drops (-1: none)
const volatile u32 drop_dir_ingress = 0;
const volatile u32 drop_dir_egress = 1;
const volatile u32 drop_dir_unknown = 2;
const volatile s32 skb_len_off = -1;
const volatile s32 skb_iif_off = -1;
const volatile s32 skb_head_off = -1;
const volatile s32 skb_network_header_off = -1;
const volatile u8 pod_level = 0;
const volatile u32 reason_slots = 0;  // reasons below this are counted in drop_table (0: none)
const volatile u32 drop_dirs = 3;     // directions per reason in drop_table (DIRECTIONS)

struct drop_value {
    u64 packets;
    u64 bytes;
};

struct drop_key {
    u32 reason;
    u32 direction;
};

// The counts by reason and direction. The kernel's own reasons (0 up to SKB_DROP_REASON_MAX,
// about 130) are slots of a per-CPU array: slot reason * drop_dirs + direction, sized by the
// plugin (reason_slots x drop_dirs) before load; an array slot costs an index, a hash entry a
// hash of the key (~30 ns a drop). Any other reason (a subsystem's, high bits set; or none:
// kernels before 5.17) goes to the hash.
RETINA_MAP(BPF_MAP_TYPE_PERCPU_ARRAY, u32, struct drop_value, 1) drop_table SEC(".maps");
RETINA_MAP(BPF_MAP_TYPE_PERCPU_HASH, struct drop_key, struct drop_value, 256) drop_counts SEC(".maps");

// The sk_buff members read here (BTF offsets, each -1 when unknown) are fetched with ONE
// bpf_probe_read_kernel of the span that holds them (88 bytes on 6.x), not a call per member:
// each call costs more than the copy. The span's bounds are computed from the constants, so
// the verifier knows them exactly; members farther apart than SKB_SPAN_MAX are read one by one.
#define SKB_SPAN_MAX 128

struct skb_span {
    u64 words[SKB_SPAN_MAX / 8];  // the sk_buff's bytes from skb_span_lo() on
    u8 fetched;  // 1: words hold the span; 0: each member is read from the sk_buff itself
    void *skb;
};

static __always_inline s32 span_lo(s32 lo, s32 off)
{
    return off >= 0 && off < lo ? off : lo;
}

static __always_inline s32 span_hi(s32 hi, s32 off, s32 size)
{
    return off >= 0 && off + size > hi ? off + size : hi;
}

// The span's bounds, recomputed from the constants wherever they are used (never kept on the
// stack: older verifiers forget what a 4-byte stack slot held and refuse the load through it).
// 8-aligned, so member loads from the copy stay aligned.
static __always_inline s32 skb_span_lo(void)
{
    s32 lo = span_lo(span_lo(0x7fffffff, skb_len_off), skb_iif_off);
    if (pod_level)
        lo = span_lo(span_lo(lo, skb_head_off), skb_network_header_off);
    return lo & ~7;
}

static __always_inline s32 skb_span_hi(void)
{
    s32 hi = span_hi(span_hi(0, skb_len_off, 4), skb_iif_off, 4);
    if (pod_level)
        hi = span_hi(span_hi(hi, skb_head_off, 8), skb_network_header_off, 2);
    return hi;
}

// Where member `off` sits in the copy. The barrier keeps clang from folding the subtraction
// into the pointer (the verifier refuses subtracting a register from a stack pointer).
static __always_inline s32 span_index(s32 off)
{
    s32 i = off - skb_span_lo();
    asm volatile("" : "+r"(i));
    return i;
}

static __always_inline void skb_fetch(struct skb_span *sp, void *skb)
{
    s32 lo = skb_span_lo(), hi = skb_span_hi();
    sp->skb = skb;
    sp->fetched = 0;
    if (hi > lo && hi - lo <= SKB_SPAN_MAX)
        sp->fetched = bpf_probe_read_kernel(sp->words, hi - lo, skb + lo) == 0;
}

// One sk_buff member at a BTF offset (-1: unknown); 1 when dst was read.
#define SKB_READ(dst, sp, off)                                                                    \
    ((off) >= 0 && ((sp)->fetched ? ((dst) = *(typeof(dst) *)((u8 *)(sp)->words + span_index(off)), 1) \
                                  : bpf_probe_read_kernel(&(dst), sizeof(dst), (sp)->skb + (off)) == 0))

// Pod-level: the dropped packet's addresses, read from its IP header at
// skb->head + skb->network_header (offsets from BTF), for flows touching an IP of interest.
#include "pod_filter.h"

struct drop_flow_key {
    u8 src[16];
    u8 dst[16];
    u32 reason;
    u8 proto;
    u8 pad[3];
};

RETINA_MAP(BPF_MAP_TYPE_LRU_PERCPU_HASH, struct drop_flow_key, struct drop_value, 16384) drop_flows SEC(".maps");

static __always_inline void count_flow(u16 protocol, u32 reason, u32 len, unsigned char *head, u16 nh)
{
    if (!head || nh == 0xffff)
        return;  // no network header set (not an IP packet yet)
    struct drop_flow_key key = {};
    key.reason = reason;
    if (protocol == ETH_P_IP) {
        struct iphdr ip;
        if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) < 0 || ip.version != 4)
            return;
        v4mapped(key.src, &ip.saddr);
        v4mapped(key.dst, &ip.daddr);
        key.proto = ip.protocol;
    } else if (protocol == ETH_P_IPV6) {
        struct ipv6hdr ip6;
        if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) < 0 || ip6.version != 6)
            return;
        __builtin_memcpy(key.src, &ip6.saddr, 16);
        __builtin_memcpy(key.dst, &ip6.daddr, 16);
        key.proto = ip6.nexthdr;
    } else {
        return;
    }
    // A known flow is counted at once: it touched an IP of interest when it was created, and
    // the agent deletes the flows whose pods leave the selection (DropReason.harvest), as for
    // packetparser's flows. Only a flow's first drop pays for the IPs-of-interest lookups.
    struct drop_value *v = bpf_map_lookup_elem(&drop_flows, &key);
    if (!v) {
        if (!either_of_interest(key.src, key.dst))
            return;
        struct drop_value zero = {};
        bpf_map_update_elem(&drop_flows, &key, &zero, BPF_NOEXIST);
        v = bpf_map_lookup_elem(&drop_flows, &key);
        if (!v)
            return;
    }
    v->packets += 1;
    v->bytes += len;
}

// The record's three fields. Where the kernel lays the record out as one of the layouts below
// (their offsets, set before load, are constants to the verifier: it follows only the branch
// that matches), the fields are loaded straight from the tracepoint's context, no copy: the
// verifier takes a context load only at an offset fixed in the instruction, hence the asm
// (clang would otherwise merge the branches' loads into one at a computed offset). Any other
// layout is copied (tp_copy) and read at its offsets.
struct drop_event {
    u64 skb;
    u32 reason;
    u16 protocol;
};

#define CTX_LOAD(dst, width, ctx, off) \
    asm volatile("%0 = *(" width " *)(%1 + " #off ")" : "=r"(dst) : "r"(ctx))

static __always_inline int read_event(struct drop_event *ev, void *ctx)
{
    u64 skb, reason, protocol;
    if (have_reason && tp_skbaddr_off == 8 && tp_protocol_off == 32 && tp_reason_off == 36) {
        // 6.11 on: skbaddr, location, rx_sk, protocol, reason
        CTX_LOAD(skb, "u64", ctx, 8);
        CTX_LOAD(protocol, "u16", ctx, 32);
        CTX_LOAD(reason, "u32", ctx, 36);
    } else if (have_reason && tp_skbaddr_off == 8 && tp_protocol_off == 24 && tp_reason_off == 28) {
        // 5.17 to 6.10: skbaddr, location, protocol, reason
        CTX_LOAD(skb, "u64", ctx, 8);
        CTX_LOAD(protocol, "u16", ctx, 24);
        CTX_LOAD(reason, "u32", ctx, 28);
    } else {
        struct tp_record rec;
        if (tp_copy(&rec, ctx) < 0)
            return -1;
        ev->skb = TP_FIELD(u64, &rec, tp_skbaddr_off);
        ev->protocol = pod_level ? TP_FIELD(u16, &rec, tp_protocol_off) : 0;
        ev->reason = have_reason ? TP_FIELD(u32, &rec, tp_reason_off) : 0xffffffff;
        return 0;
    }
    ev->skb = skb;
    ev->protocol = protocol;
    ev->reason = reason;
    return 0;
}

SEC("tracepoint")
int on_kfree_skb(void *ctx)
{
    struct drop_event ev;
    if (read_event(&ev, ctx) < 0)
        return 0;
    u32 reason = ev.reason;  // kernels before 5.17: no reason field (0xffffffff)
    if (have_reason && (s32)reason <= last_not_a_drop)  // SKB_NOT_DROPPED_YET, SKB_CONSUMED
        return 0;
    struct skb_span sp;
    skb_fetch(&sp, (void *)ev.skb);
    struct drop_key key = {.reason = reason, .direction = drop_dir_unknown};
    int iif = 0;
    if (SKB_READ(iif, &sp, skb_iif_off))
        key.direction = iif ? drop_dir_ingress : drop_dir_egress;
    struct drop_value *v;
    if (reason < reason_slots) {
        u32 slot = reason * drop_dirs + key.direction;
        v = bpf_map_lookup_elem(&drop_table, &slot);
    } else {
        struct drop_value zero = {};
        v = lookup_or_try_init(&drop_counts, &key, &zero);
    }
    if (!v)
        return 0;
    v->packets += 1;
    u32 len = 0;
    if (SKB_READ(len, &sp, skb_len_off))
        v->bytes += len;
    if (pod_level) {
        unsigned char *head = NULL;
        u16 nh = 0xffff;
        if (SKB_READ(head, &sp, skb_head_off) && SKB_READ(nh, &sp, skb_network_header_off))
            count_flow(ev.protocol, reason, len, head, nh);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

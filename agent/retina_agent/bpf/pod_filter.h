// Shared by the pod-level programs: addresses as 16 bytes (IPv4 as ::ffff:a.b.c.d) and the
// filter of IPs of interest (pods in the selected namespaces) that the agent keeps up to date.
// Its size is maxIPs (set before load; 1 when the object runs without pod level).
#ifndef RETINA_POD_FILTER_H
#define RETINA_POD_FILTER_H

#include "common.h"

struct addr_key {
    u8 addr[16];
};

RETINA_MAP(BPF_MAP_TYPE_HASH, struct addr_key, u8, 1) ips_of_interest SEC(".maps");

static __always_inline void v4mapped(u8 *out, const void *addr)
{
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(out + 12, addr, 4);
}

// Does a packet from src to dst (16-byte addresses) touch a pod of interest?
static __always_inline int either_of_interest(const u8 *src, const u8 *dst)
{
    struct addr_key a = {};
    __builtin_memcpy(a.addr, src, 16);
    if (bpf_map_lookup_elem(&ips_of_interest, &a))
        return 1;
    __builtin_memcpy(a.addr, dst, 16);
    return bpf_map_lookup_elem(&ips_of_interest, &a) != NULL;
}

#endif

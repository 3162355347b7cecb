// Shared by the pod-level programs: addresses as 16 bytes (IPv4 as ::ffff:a.b.c.d) and the
// filter of IPs of interest (pods in the selected namespaces) that the agent keeps up to date.
#ifndef RETINA_POD_FILTER_H
#define RETINA_POD_FILTER_H

struct addr_key {
    u8 addr[16];
};

BPF_HASH(ips_of_interest, struct addr_key, u8, MAX_IPS);

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
    if (ips_of_interest.lookup(&a))
        return 1;
    __builtin_memcpy(a.addr, dst, 16);
    return ips_of_interest.lookup(&a) != NULL;
}

#endif

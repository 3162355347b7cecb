// What every BPF program here starts with: libbpf's helper declarations and the UAPI types
// under the short names the programs use. Only UAPI headers (linux-libc-dev): kernel-internal
// layouts differ between kernels, so offsets into them come as load-time constants (.rodata,
// set by the loader before load; see loader.py).
#ifndef RETINA_COMMON_H
#define RETINA_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;

// A map of the BTF-defined kind (libbpf). Sizes given here are defaults: the loader sets the
// configured ones (bpf_map__set_max_entries) before load.
#define RETINA_MAP(_type, _key, _value, _entries)                                                 \
    struct {                                                                                      \
        __uint(type, _type);                                                                      \
        __type(key, _key);                                                                        \
        __type(value, _value);                                                                    \
        __uint(max_entries, _entries);                                                            \
    }

// bcc's map.lookup_or_try_init(): the value for key, created from init when missing.
static __always_inline void *lookup_or_try_init(void *map, const void *key, const void *init)
{
    void *v = bpf_map_lookup_elem(map, key);
    if (v)
        return v;
    bpf_map_update_elem(map, key, init, BPF_NOEXIST);
    return bpf_map_lookup_elem(map, key);
}

#endif

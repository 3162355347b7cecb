// A tracepoint's record as the running kernel lays it out. Fields move between kernels
// (skb:kfree_skb gained `reason` in 5.17 and `rx_sk` in 6.x), so the C knows no offsets: the
// plugin reads them from tracefs (`events/<category>/<event>/format`) and sets one constant
// per field (tp_<field>_off) and the bytes to copy (tp_record_size) before load. The record is
// copied once onto the stack; a field is then a load at a constant offset, which the verifier
// checks against the copy.
#ifndef RETINA_TRACEPOINT_H
#define RETINA_TRACEPOINT_H

#include "common.h"

#ifndef TP_RECORD_MAX  // bytes copied: retina_agent/bpf/tracefs.py, given by build.py
#error "TP_RECORD_MAX comes from retina_agent/bpf/tracefs.py (python -m retina_agent.bpf.build)"
#endif

const volatile u32 tp_record_size = TP_RECORD_MAX;

struct tp_record {
    u64 words[TP_RECORD_MAX / 8];
};

static __always_inline int tp_copy(struct tp_record *rec, void *ctx)
{
    u32 size = tp_record_size;
    if (size > sizeof(*rec))
        size = sizeof(*rec);
    return bpf_probe_read_kernel(rec, size, ctx);
}

// The field of type T at byte offset OFF (a tp_*_off constant) of the copied record.
#define TP_FIELD(T, rec, off) (*(T *)((u8 *)(rec) + (off)))
#define TP_FIELD_PTR(rec, off) ((u8 *)(rec) + (off))

#endif

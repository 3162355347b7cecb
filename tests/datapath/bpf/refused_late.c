// Refused only after a long verifier log (tests/datapath/test_bpf_objects.py): many checked
// reads first, then the read whose length the verifier cannot bound. Where it says why is at
// the end of a log of tens of kilobytes.
#include "common.h"

SEC("tc")
int unbounded_late(struct __sk_buff *skb)
{
    u8 buf[16];
    u64 sum = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < 200; i++) {  // the verifier walks every iteration
        if (bpf_skb_load_bytes(skb, i, buf, 1) == 0)
            sum += buf[0];
    }
    if (sum == 12345)
        return 1;
    bpf_skb_load_bytes(skb, 0, buf, skb->len);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

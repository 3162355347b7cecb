// A program every verifier refuses (tests/datapath/test_bpf_objects.py): a read whose length it
// cannot bound (any u32) into a 16-byte buffer.
#include "common.h"

SEC("tc")
int unbounded(struct __sk_buff *skb)
{
    u8 buf[16];
    bpf_skb_load_bytes(skb, 0, buf, skb->len);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";

// An empty TC program: the floor of what run-time accounting reports for any program on the
// machine (its two clock reads and the call).
#include "common.h"  // retina_agent/bpf: build.py puts it on the include path

SEC("tc")
int empty(struct __sk_buff *skb)
{
    return -1;  // TC_ACT_UNSPEC
}

char LICENSE[] SEC("license") = "GPL";

"""Netfilter rulesets read from the kernel's own rule counters, and who wrote each drop rule.

- ``model``: tables, chains and rules as read (one shape for every backend)
- ``iptables``: ``iptables-save -c`` text (iptables-legacy and iptables-nft)
- ``nft``: native nftables through libnftables' JSON (Debian ``python3-nftables``)
- ``reader``: one network namespace's ruleset from every backend that has tables there
- ``owners``: Calico, kube-router, kube-proxy/kubelet or nobody: the owner and the policy
- ``drops``: the drop counters of a ruleset, with bounded label values
"""

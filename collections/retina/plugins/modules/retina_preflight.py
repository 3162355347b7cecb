#!/usr/bin/python
# Copyright: retina-onprem contributors
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports

DOCUMENTATION = r"""
---
module: retina_preflight
short_description: Check whether a node can run the Retina agent, plugin by plugin
version_added: "0.1.0"
author:
  - retina-onprem contributors
description:
  - Audits the kernel of the managed node for the Retina network-observability agent
    (kernel version, BTF, the bpf() syscall loading a program, libbpf, bpffs/tracefs/debugfs, the
    tracepoints and tracepoint fields the plugins read, kprobes, TC clsact tried in a throw-away
    network namespace, capabilities, memlock limit, cgroup version) and tells which agent plugins
    will run and why not.
  - Kernel headers are reported but not needed (the agent's BPF programs are compiled into its
    image), so a node without headers for its kernel runs every plugin its kernel supports.
  - Optionally audits the control host (Helm >= 3.8, kubectl, cluster reachable and its version,
    kube-prometheus-stack CRDs, Grafana C(/api/health)).
  - Returns the same report as the C(retina-preflight --json) command, in RV(report) and as the
    fact C(retina_preflight).
  - Changes nothing on the node. The TC probe creates a network namespace with a veth pair and
    removes it before returning.
options:
  root:
    description:
      - Read procfs, sysfs, C(/boot) and C(/lib/modules) from this directory tree instead of the live host.
      - In a tree, live-only probes (bpf(), libbpf, TC clsact) are reported as skipped unless the tree
        holds C(retina-preflight.probes.json) recording them.
    type: path
    default: /
  node:
    description:
      - Run the node checks. Set to V(false) on a control host that is not a node.
    type: bool
    default: true
  control_host:
    description:
      - Also run the control-host checks (Helm, kubectl, cluster, kube-prometheus-stack, Grafana).
    type: bool
    default: false
  kubeconfig:
    description:
      - Path to a kubeconfig for the cluster checks.
      - Defaults to E(KUBECONFIG), then C(~/.kube/config), then the in-cluster service account.
    type: path
  context:
    description:
      - The kubeconfig context to use.
    type: str
  grafana_url:
    description:
      - Base URL of Grafana; C(GET <grafana_url>/api/health) must answer.
      - Without it the Grafana check is skipped.
      - Must not contain credentials.
    type: str
  plugins:
    description:
      - The agent plugins to give verdicts for (choices and default come from the plugin catalogue).
    type: list
    elements: str
    choices: [linuxutil, packetforward, dropreason, dns, tcpretrans, packetparser, latency, netfilter]
    default: [linuxutil, packetforward, dropreason, dns, tcpretrans, packetparser, latency, netfilter]
  fail_on:
    description:
      - V(fail) makes the task fail when a required check failed.
      - V(warn) makes it fail on warnings too.
      - V(never) always returns the report without failing (for cluster-wide tables).
    type: str
    choices: [fail, warn, never]
    default: fail
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
requirements:
  - Python >= 3.6 on the managed node (CentOS 7's python3 is enough); on an older Python the
    module fails with a message naming the Python it needs.
  - kubernetes (Python package) on the host running the control-host checks.
notes:
  - The node checks need root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) for the bpf() and TC probes;
    run the task with become.
"""

EXAMPLES = r"""
- name: Audit every node, never fail, collect the report as a fact
  retina.observability.retina_preflight:
    fail_on: never
  become: true

- name: Stop when a required check failed on this node
  retina.observability.retina_preflight:
    plugins: [packetforward, dropreason, dns]

- name: Audit the control host only
  retina.observability.retina_preflight:
    node: false
    control_host: true
    kubeconfig: ~/.kube/config
    grafana_url: http://grafana.monitoring.svc:3000
  delegate_to: localhost
  run_once: true

- name: Audit a kernel from a copied host tree
  retina.observability.retina_preflight:
    root: /srv/host-trees/centos7
    fail_on: never
  register: centos7

- name: Names of the plugins that will not run
  ansible.builtin.debug:
    msg: >-
      {{ ansible_facts.retina_preflight
         | community.general.json_query('plugins[?status==`unavailable`].name') }}
"""

RETURN = r"""
report:
  description: The preflight report, the same document as C(retina-preflight --json).
  returned: always
  type: dict
  contains:
    schema:
      description: Report format identifier.
      type: str
      sample: retina-preflight/v1
    host:
      description: The audited host (hostname, kernel_release, os, root, mode V(live) or V(root), python).
      type: dict
    checks:
      description: One entry per check, with C(id), C(title), C(scope) (node or control),
        C(verdict) (pass, warn, fail or skip), C(value), C(fix) (on warn and fail) and C(detail).
      type: list
      elements: dict
      sample:
        - id: kernel_version
          title: Kernel version >= 5.4
          scope: node
          verdict: fail
          value: 3.10.0-1160.el7.x86_64 (upstream 3.10.0 < 5.4)
          fix: "Boot a kernel >= 5.4: ..."
          detail: {release: 3.10.0-1160.el7.x86_64, upstream: 3.10.0}
    plugins:
      description: Per agent plugin, C(status) (available, degraded, unavailable), C(verdict), C(reasons),
        C(unverified) (checks skipped in tree mode) and C(needs).
      type: list
      elements: dict
    summary:
      description: C(verdict), C(exit_code) (0 pass, 1 fail, 2 warnings only), C(counts), C(failed) and
        C(warned) check ids, and the plugin names by status.
      type: dict
ansible_facts:
  description: Facts set by the module.
  returned: always
  type: dict
  contains:
    retina_preflight:
      description: The same report as RV(report).
      type: dict
"""

import sys

# The checks (module_utils) need Python 3.6; say so instead of failing on their syntax. So that
# an older Python (CentOS 7's default python is 2.7) gets this far, this file uses no f-strings.
MIN_PYTHON = (3, 6)
if sys.version_info < MIN_PYTHON:
    import json

    print(
        json.dumps(
            {
                "failed": True,
                "msg": "retina_preflight needs Python %d.%d or newer on the managed node, found %s (%s); "
                "install python3 and set ansible_python_interpreter to it"
                % (MIN_PYTHON + (sys.version.split()[0], sys.executable)),
            }
        )
    )
    sys.exit(1)

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.retina.observability.plugins.module_utils.preflight import (
    PreflightInputError,
    PreflightOptions,
    run_preflight,
)
from ansible_collections.retina.observability.plugins.module_utils.preflight.catalogue import PLUGIN_NAMES

FAIL_ON_LEVELS = {"fail": ("fail",), "warn": ("fail", "warn"), "never": ()}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/"),
            node=dict(type="bool", default=True),
            control_host=dict(type="bool", default=False),
            kubeconfig=dict(type="path"),
            context=dict(type="str"),
            grafana_url=dict(type="str"),
            plugins=dict(type="list", elements="str", choices=list(PLUGIN_NAMES), default=list(PLUGIN_NAMES)),
            fail_on=dict(type="str", choices=["fail", "warn", "never"], default="fail"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    options = PreflightOptions(
        root=params["root"],
        node=params["node"],
        control_host=params["control_host"],
        kubeconfig=params["kubeconfig"],
        context=params["context"],
        grafana_url=params["grafana_url"],
        plugins=tuple(params["plugins"]),
    )
    try:
        report = run_preflight(options)
    except PreflightInputError as error:
        module.fail_json(msg="retina_preflight: {}".format(error))

    result = dict(changed=False, report=report, ansible_facts=dict(retina_preflight=report))
    summary = report["summary"]
    if summary["verdict"] in FAIL_ON_LEVELS[params["fail_on"]]:
        names = summary["failed"] if summary["verdict"] == "fail" else summary["warned"]
        msg = "retina preflight {} on {}: {} (fail_on={})".format(
            summary["verdict"], report["host"]["hostname"], ", ".join(names), params["fail_on"]
        )
        module.fail_json(msg=msg, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

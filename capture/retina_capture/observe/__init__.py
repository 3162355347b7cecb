"""What the agents measured, read back from Prometheus for ``kubectl retina diagnose`` and
``kubectl retina map``.

- ``prometheus``: where Prometheus is (flag, environment, or the installer's wiring through
  the API server) and counts over a time window
- ``cluster``: the pods, Services and NetworkPolicies a question is about (Kubernetes API)
- ``diagnose``: the evidence about one pod pair and the verdict it supports
- ``graph``: workloads and the traffic between them, drawn with Graphviz
"""

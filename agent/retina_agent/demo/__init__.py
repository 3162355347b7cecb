"""``retina-demo``: the agent on this host against a small node built from namespaces.

``node`` builds the node (a bridge and one network namespace per pod, like the bridge CNI),
``agent_process`` runs the real ``retina-agent`` and reads its metrics, ``cli`` is the command.
The tests and benchmarks use the same node and process (through ``retina_lab``, which is not
installed: it holds only what tests need, like the Kubernetes API emulator).
"""

"""Delay chosen packets of a pod by a fixed time: a stand-in for ``tc netem delay``.

This kernel has no netem (CONFIG_NET_SCH_NETEM unset), but NFQUEUE is built in: an iptables
rule in the pod's namespace queues matching packets to user space, where a thread holds each
one for ``delay`` seconds before accepting it (packets are released in order).
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Sequence

from retina_agent.demo.node import LabPod


class PacketDelay:
    def __init__(
        self, pod: LabPod, match: Sequence[str], delay: float, chain: str = "OUTPUT", queue: int = 7
    ) -> None:
        """``match``: iptables match arguments, e.g. ``["-p", "tcp", "--sport", "6443"]``."""
        self.pod = pod
        self.rule = [chain, *match, "-j", "NFQUEUE", "--queue-num", str(queue)]
        self.delay = delay
        self.queue = queue
        self.delayed = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PacketDelay:
        self._thread.start()
        if not self._ready.wait(10) or self._error:
            raise RuntimeError(f"NFQUEUE delay did not start: {self._error}")
        self.pod.run(["iptables", "-A", *self.rule])
        return self

    def __exit__(self, *exc) -> None:
        self.pod.run(["iptables", "-D", *self.rule], check=False)
        self._stop.set()
        self._thread.join(5)

    def _hold(self, packet) -> None:
        time.sleep(self.delay)
        packet.accept()
        self.delayed += 1

    def _run(self) -> None:
        from netfilterqueue import NetfilterQueue

        try:
            with self.pod.entered():  # the queue's netlink socket lives in the pod's netns
                nfq = NetfilterQueue()

                nfq.bind(self.queue, self._hold)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            fd = nfq.get_fd()
            while not self._stop.is_set():
                readable, _, _ = select.select([fd], [], [], 0.2)
                if readable:
                    nfq.run(block=False)
        finally:
            nfq.unbind()

"""Container probes (``httpGet``, ``tcpSocket``, ``exec``) as the kubelet runs them."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from retina_lab.noderunner.podspec import UnsupportedSpec


def _port(port: Any, container: Mapping[str, Any], where: str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise UnsupportedSpec(f"{where}: port {port!r} is not a port of the container")


def check_probe(probe: Mapping[str, Any], container: Mapping[str, Any], where: str) -> None:
    if not any(k in probe for k in ("httpGet", "tcpSocket", "exec")):
        raise UnsupportedSpec(
            f"{where}: only httpGet, tcpSocket and exec probes are supported (got {sorted(probe)})"
        )
    for key in ("httpGet", "tcpSocket"):
        if key in probe:
            _port(probe[key]["port"], container, where)


@dataclass
class ProbeState:
    """One probe of one container: when it runs next, its consecutive results."""

    probe: Mapping[str, Any]
    container: Mapping[str, Any]
    started: float = field(default_factory=time.monotonic)
    next_run: float = 0.0
    successes: int = 0
    failures: int = 0
    ok: bool | None = None  # None: not decided yet

    def __post_init__(self) -> None:
        self.next_run = self.started + float(self.probe.get("initialDelaySeconds", 0))

    def due(self) -> bool:
        return time.monotonic() >= self.next_run

    def run(self, host: str, exec_in: Callable[[list[str], float], int]) -> bool | None:
        """Run once when due; returns the decided state (success/failure thresholds applied)."""
        if not self.due():
            return self.ok
        self.next_run = time.monotonic() + float(self.probe.get("periodSeconds", 10))
        timeout = float(self.probe.get("timeoutSeconds", 1))
        passed = self._once(host, exec_in, timeout)
        if passed:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.probe.get("successThreshold", 1)):
                self.ok = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= int(self.probe.get("failureThreshold", 3)):
                self.ok = False
        return self.ok

    def _once(self, host: str, exec_in: Callable[[list[str], float], int], timeout: float) -> bool:
        probe = self.probe
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = _port(get["port"], self.container, "probe")
                scheme = get.get("scheme", "HTTP").lower()
                url = f"{scheme}://{get.get('host') or host}:{port}{get.get('path', '/')}"
                request = urllib.request.Request(
                    url, headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                )
                with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (probe URL)
                    return 200 <= resp.status < 400
            if "tcpSocket" in probe:
                port = _port(probe["tcpSocket"]["port"], self.container, "probe")
                with socket.create_connection(
                    (probe["tcpSocket"].get("host") or host, port), timeout=timeout
                ):
                    return True
            return exec_in(list(probe["exec"]["command"]), timeout) == 0
        except (OSError, urllib.error.URLError, ValueError):
            return False

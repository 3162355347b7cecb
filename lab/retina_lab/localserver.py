"""A server from Debian's packages run for a test on a free loopback port: its own work
directory and log, ready when ``/-/ready`` answers, stopped and removed afterwards.
Prometheus and Alertmanager (``retina_lab.prometheus``, ``retina_lab.alertmanager``) are two."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Self

from retina_lab.agent import free_port, wait_for


class LocalServer:
    #: The program's name (the log, the error messages) and its binary, set by a subclass.
    name = "server"
    binary_name = ""

    def __init__(self) -> None:
        self.binary = shutil.which(self.binary_name) or f"/usr/bin/{self.binary_name}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"retina-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_text(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def argv(self) -> list[str]:
        """The command line (a subclass's flags, with ``self.port`` and ``self.workdir``)."""
        raise NotImplementedError

    def start(self, timeout: float = 60) -> Self:
        self._log = open(self.workdir / f"{self.name}.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen([self.binary, *self.argv()], stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout, 0.3, f"{self.name} /-/ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: " + self.log_text[-2000:])
        with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

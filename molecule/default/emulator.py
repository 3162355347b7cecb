"""Start and stop the Kubernetes API emulator (``retina_lab.kube.KubeEmulator``) for molecule.

    python emulator.py start DIR   # serve in the background; DIR/kubeconfig points at it
    python emulator.py stop DIR    # stop the server started in DIR (no-op when none runs)

``start`` returns once the API answers; ``DIR/pid`` holds the server's process id, which ``stop``
signals (and nothing else). The emulator keeps its state in memory for as long as it runs.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def serve(workdir: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))  # the test lab (not installed)
    from retina_lab.kube import KubeEmulator

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with KubeEmulator(workdir=workdir) as kube:
        (workdir / "ready").write_text(kube.url)
        stop.wait()
    (workdir / "ready").unlink(missing_ok=True)


def _answers(kubeconfig: Path) -> bool:
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    server = cluster["server"]
    token = config["users"][0]["user"]["token"]
    context = None
    if "certificate-authority-data" in cluster:  # the emulator serves HTTPS with its own CA
        context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
    request = urllib.request.Request(f"{server}/version", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310 - loopback URL
        return response.status == 200


def start(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    pid_file = workdir / "pid"
    if pid_file.exists():
        print(f"emulator already running (pid {pid_file.read_text().strip()})")
        return
    (workdir / "ready").unlink(missing_ok=True)
    log = (workdir / "emulator.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", str(workdir)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            sys.exit(f"emulator exited with {proc.returncode}; see {workdir / 'emulator.log'}")
        if (workdir / "ready").exists() and _answers(workdir / "kubeconfig"):
            print(f"emulator serving at {(workdir / 'ready').read_text()} (pid {proc.pid})")
            return
        time.sleep(0.2)
    stop(workdir)
    sys.exit(f"emulator did not answer within {START_TIMEOUT:.0f}s; see {workdir / 'emulator.log'}")


def stop(workdir: Path) -> None:
    pid_file = workdir / "pid"
    if not pid_file.exists():
        print("no emulator running")
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    print(f"emulator (pid {pid}) stopped")


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop", "serve"):
        sys.exit(f"usage: {sys.argv[0]} start|stop DIR")
    action, workdir = sys.argv[1], Path(sys.argv[2]).resolve()
    {"start": start, "stop": stop, "serve": serve}[action](workdir)


if __name__ == "__main__":
    main()

"""``pods/log`` and ``pods/exec`` from the real containers (``podman logs``/``podman exec``),
as the kubelet's streaming server answers them for the API server. The API server
authenticates and authorizes the request (``pods/log`` get, ``pods/exec`` create) and then
calls these handlers (``KubeEmulator.add_subresource``).

``exec`` speaks the websocket protocol ``v4.channel.k8s.io`` that ``kubernetes.stream`` uses:
each binary frame starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the final Status).
(kubectl 1.20 execs over SPDY, which this server does not speak.)
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import aiohttp
import aiohttp.web

from images.podman import podman_argv

if TYPE_CHECKING:
    from retina_lab.noderunner.kubelet import Kubelet, PodWorker


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )


class PodStreams:
    def __init__(self, kubelet: Kubelet) -> None:
        self.kubelet = kubelet

    def _container(
        self,
        request: aiohttp.web.Request,
        namespace: str,
        pod: str,
    ) -> tuple[PodWorker | None, str | aiohttp.web.Response]:
        worker = self.kubelet.worker_for(namespace, pod)
        if worker is None:
            return None, _status(404, "NotFound", f'pod "{pod}" is not running on this node runner\'s nodes')
        name = request.query.get("container")
        names = [c["name"] for c in worker.pod["spec"]["containers"]]
        every = [c["name"] for c in worker.pod["spec"].get("initContainers") or []] + names
        if not name:
            if len(names) != 1:
                return None, _status(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {pod}, choose one of: {names}",
                )
            name = names[0]
        if name not in every or name not in worker.containers:
            return None, _status(400, "BadRequest", f"container {name} is not valid for pod {pod}")
        return worker, worker.containers[name].podman_name

    async def logs(
        self, request: aiohttp.web.Request, namespace: str, pod: str, user: object = None
    ) -> aiohttp.web.StreamResponse:
        worker, found = self._container(request, namespace, pod)
        if worker is None:
            assert isinstance(found, aiohttp.web.Response)
            return found
        q = request.query
        args = ["logs"]
        if q.get("tailLines"):
            args += ["--tail", str(int(q["tailLines"]))]
        if q.get("timestamps", "").lower() == "true":
            args.append("--timestamps")
        if q.get("sinceSeconds"):
            args += ["--since", f"{int(q['sinceSeconds'])}s"]
        follow = q.get("follow", "").lower() == "true"
        if follow:
            args.append("--follow")
        limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        proc = await asyncio.create_subprocess_exec(
            *podman_argv(*args, str(found)), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        try:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                if limit is not None:
                    chunk = chunk[: max(0, limit - sent)]
                sent += len(chunk)
                await response.write(chunk)
                if limit is not None and sent >= limit:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        return response

    async def exec(
        self, request: aiohttp.web.Request, namespace: str, pod: str, user: object = None
    ) -> aiohttp.web.StreamResponse:
        worker, found = self._container(request, namespace, pod)
        if worker is None:
            assert isinstance(found, aiohttp.web.Response)
            return found
        command = request.query.getall("command", [])
        if not command:
            return _status(400, "BadRequest", "you must specify at least one command for the container")
        if request.query.get("tty", "").lower() == "true":
            return _status(400, "BadRequest", "tty exec is not supported by the node runner")
        stdin = request.query.get("stdin", "").lower() == "true"
        ws = aiohttp.web.WebSocketResponse(protocols=("v4.channel.k8s.io", "channel.k8s.io"))
        await ws.prepare(request)
        argv = podman_argv("exec", *(["--interactive"] if stdin else []), str(found), *command)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        async def pump(stream: asyncio.StreamReader, channel: int) -> None:
            while chunk := await stream.read(65536):
                await ws.send_bytes(bytes([channel]) + chunk)

        async def feed() -> None:
            assert proc.stdin is not None
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    proc.stdin.write(msg.data[1:])
                    await proc.stdin.drain()
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break
            proc.stdin.close()

        feeder = asyncio.ensure_future(feed()) if stdin else None
        assert proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
        code = await proc.wait()
        if feeder is not None:
            feeder.cancel()
        if code == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        return ws

"""The API server's HTTPS front: TLS for in-cluster clients, and the kubelet's subresources.

Every request is passed unchanged (the caller's bearer token included, so the API server
authenticates and authorizes it) to the API server behind, except the subresources that the
real API server, too, hands to the kubelet of the pod's node: ``pods/log`` and ``pods/exec``.
Those go to the handlers a node runner registers (:meth:`ApiFront.register_subresource`),
after the API server confirmed the caller may ``get`` that pod (see the note in ``_authorize``).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable

import aiohttp
import aiohttp.web

from retina_lab.noderunner.tls import ServingCerts

#: ``handler(request, namespace, pod_name)``.
SubresourceHandler = Callable[[aiohttp.web.Request, str, str], Awaitable[aiohttp.web.StreamResponse]]
_POD_SUB = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/(log|exec|attach|portforward)$")
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "proxy-connection",
    "te",
    "trailer",
}


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


class ApiFront:
    """HTTPS on ``hosts`` (one port), in front of ``backend`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, backend: str, certs: ServingCerts, hosts: list[str]) -> None:
        self.backend = backend.rstrip("/")
        self.certs = certs
        self.hosts = hosts
        self.port = 0
        self._handlers: dict[str, SubresourceHandler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def register_subresource(self, subresource: str, handler: SubresourceHandler) -> None:
        """Serve ``pods/<subresource>`` (``log``, ``exec``) with ``handler``."""
        self._handlers[subresource] = handler

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="api-front", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or errors:
            raise RuntimeError(f"the API front did not start: {errors}")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = self._loop = None

    def run_coroutine(self, coro: Awaitable[object]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    async def _start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certs.server_cert, self.certs.server_key)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False
        )
        app = aiohttp.web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = aiohttp.web.AppRunner(app, shutdown_timeout=1, handle_signals=False, access_log=None)
        await self._runner.setup()
        for host in self.hosts:
            site = aiohttp.web.TCPSite(self._runner, host, self.port, ssl_context=context, reuse_address=True)
            await site.start()
            if not self.port:
                sock: socket.socket = site._server.sockets[0]  # type: ignore[union-attr]
                self.port = sock.getsockname()[1]

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- requests ------------------------------------------------------------------------------
    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        m = _POD_SUB.match(request.path)
        if m:
            namespace, pod, sub = m.groups()
            handler = self._handlers.get(sub)
            if handler is None:
                return _status(404, "NotFound", f"pods/{sub} is not served by this node runner")
            denied = await self._authorize(request, namespace, pod, sub)
            if denied is not None:
                return denied
            return await handler(request, namespace, pod)
        return await self._proxy(request)

    async def _authorize(
        self, request: aiohttp.web.Request, namespace: str, pod: str, sub: str
    ) -> aiohttp.web.StreamResponse | None:
        """Ask the API server whether the caller may use ``pods/<sub>``.

        A SelfSubjectAccessReview when the API server serves one; otherwise (an API server
        without authorization) a ``get`` of the pod with the caller's token, which at least
        authenticates the caller and finds the pod.
        """
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        verb = "create" if sub in ("exec", "attach", "portforward") else "get"
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "resource": "pods",
                    "subresource": sub,
                    "name": pod,
                }
            },
        }
        async with self._session.post(
            f"{self.backend}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            json=review,
            headers=headers,
        ) as resp:
            if resp.status in (200, 201):
                body = await resp.json()
                if not (body.get("status") or {}).get("allowed"):
                    return _status(
                        403,
                        "Forbidden",
                        f'pods "{pod}" is forbidden: cannot {verb} '
                        f'resource "pods/{sub}" in the namespace "{namespace}"',
                    )
            elif resp.status in (401, 403):
                return aiohttp.web.Response(
                    status=resp.status, body=await resp.read(), content_type="application/json"
                )
        async with self._session.get(
            f"{self.backend}/api/v1/namespaces/{namespace}/pods/{pod}", headers=headers
        ) as resp:
            if resp.status != 200:
                return aiohttp.web.Response(
                    status=resp.status, body=await resp.read(), content_type="application/json"
                )
        return None

    async def _proxy(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read() if request.can_read_body else None
        url = f"{self.backend}{request.rel_url}"
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                response = aiohttp.web.StreamResponse(
                    status=upstream.status,
                    headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS},
                )
                await response.prepare(request)
                # Streamed chunk by chunk: watches are long-lived responses.
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectionError as exc:
            return _status(503, "ServiceUnavailable", f"the API server is not reachable: {exc}")
        except ConnectionResetError:
            return aiohttp.web.Response(status=499)

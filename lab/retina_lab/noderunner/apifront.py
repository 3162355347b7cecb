"""The API server's endpoint for pods: HTTPS on the node's loopback and on the pod network's
gateway, relayed to the API server.

Pods on the pod network cannot reach an API server that listens on ``127.0.0.1`` only, and
in-cluster config verifies the server's certificate against the pod's ``ca.crt`` for the
address in ``KUBERNETES_SERVICE_HOST``. So this relay serves a certificate (from the runner's
CA) for both addresses and passes every request unchanged, bearer token included, to the API
server, which authenticates and authorizes it. Responses are streamed (watches).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import aiohttp
import aiohttp.web

from retina_lab.kube_tls import ServingCerts

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

    def __init__(
        self, backend: str, certs: ServingCerts, hosts: list[str], backend_ca: str | None = None
    ) -> None:
        self.backend = backend.rstrip("/")
        self.backend_ca = backend_ca
        self.certs = certs
        self.hosts = hosts
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

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

    async def _start(self) -> None:
        context = self.certs.server_context()
        upstream_tls = ssl.create_default_context(cafile=self.backend_ca) if self.backend_ca else None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            connector=aiohttp.TCPConnector(ssl=upstream_tls) if upstream_tls else None,
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
        if request.headers.get("Upgrade"):
            return _status(
                501,
                "NotImplemented",
                "this relay does not pass protocol upgrades (exec, "
                "port-forward): use the API server's own address",
            )
        return await self._proxy(request)

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
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                except (ConnectionResetError, aiohttp.ClientPayloadError):
                    pass  # the client or the API server went away mid-stream
                return response
        except aiohttp.ClientConnectionError as exc:
            return _status(503, "ServiceUnavailable", f"the API server is not reachable: {exc}")

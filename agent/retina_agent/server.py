"""HTTP endpoints: /metrics (Prometheus text), /healthz, /readyz.

The agent runs with hostNetwork, so anything that reaches the node can open connections to it.
The server is built so that slow or hostile clients cannot take /metrics away from Prometheus:

* all socket I/O happens on one asyncio event loop thread: an idle or half-sent connection
  costs a coroutine, not a thread;
* each request must arrive whole within ``read_timeout`` (headers at most 16 KiB, no bodies) and
  each response must be taken by the client within ``write_timeout``; keep-alive connections
  are closed after ``idle_timeout`` without a request;
* at most ``max_connections`` connections are open; a new one past the cap closes the oldest
  connection that has not sent a complete request, so a flood of half-sent requests cannot
  lock out a new scrape;
* responses are rendered by a fixed pool of ``workers`` threads; when all are busy and
  ``workers`` more requests wait, further requests get 503 at once instead of queueing.

So the thread count is fixed (1 + ``workers``) whatever the clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from retina_agent.status import PluginStates

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts (seconds) and caps of the HTTP server (module doc)."""

    read_timeout: float = 10.0
    write_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 256
    workers: int = 2


def make_app(
    registry: CollectorRegistry, states: PluginStates, extra: Callable[[], Iterable[bytes]] | None = None
) -> Callable:
    """A WSGI app; ``extra`` renders more exposition text (the pod-level series) after the
    registry's, in chunks: the response is sent chunk by chunk, never joined (at 100,000
    series one copy of the text is 14 MiB)."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            chunks = [generate_latest(registry)]
            if extra is not None:
                chunks.extend(extra())
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return chunks
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            body = {
                n: {"state": s.state, "reason": s.reason, **({"attach": s.attach} if s.attach else {})}
                for n, s in states.snapshot().items()
            }
            status = "200 OK" if states.ready() else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps({"ready": states.ready(), "plugins": body}).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


def _call_app(app: Callable, method: str, target: str) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """Run the WSGI ``app`` for one request (in a worker thread) -> status, headers, body chunks."""
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    started: dict = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, headers

    result = app(environ, start_response)
    try:
        chunks = list(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started["status"], list(started["headers"]), chunks


def _head(status: str, headers: list[tuple[str, str]], length: int, *, keep_alive: bool) -> bytes:
    """The status line and headers of a response whose body is ``length`` bytes."""
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("content-length", "connection")]
    lines += [f"Content-Length: {length}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _plain(status: str, text: str) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    return status, [("Content-Type", "text/plain")], [(text + "\n").encode()]


class MetricsServer:
    """Serve ``make_app(...)`` on ``host:port`` from a background thread (module doc)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        states: PluginStates,
        extra: Callable[[], str] | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.app = make_app(registry, states, extra)
        self.limits = limits or ServerLimits()
        # Bind now, so a port in use is reported by the constructor (the CLI turns it into a message).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._pool = ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="http-worker")
        self._in_flight = 0  # requests given to the pool and not finished (event-loop thread only)
        # Connections open, and those among them without a complete request (oldest first).
        self._open: dict[int, asyncio.StreamWriter] = {}
        self._pending: OrderedDict[int, asyncio.StreamWriter] = OrderedDict()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self.evicted = 0  # connections closed to make room (counted for tests and logs)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self.thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- the event loop --------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def open_server() -> None:
            self._server = await asyncio.start_server(
                self._connection, sock=self._sock, limit=MAX_HEADER_BYTES
            )

        try:
            self._loop.run_until_complete(open_server())
            self._ready.set()
            self._loop.run_forever()
        finally:
            self._ready.set()
            if self._server is not None:
                self._server.close()
            # Open connections end here: each task is cancelled and run to its end (its
            # ``finally`` closes the socket), so none is destroyed half-way on a closed loop.
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(
                    asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
                )
            self._loop.close()

    def _admit(self, key: int, writer: asyncio.StreamWriter) -> None:
        """Count a new connection; past the cap close the oldest ones still sending a request."""
        self._open[key] = writer
        self._pending[key] = writer
        while len(self._open) > self.limits.max_connections and self._pending:
            oldest_key, oldest = self._pending.popitem(last=False)
            self._open.pop(oldest_key, None)
            oldest.transport.abort()
            self.evicted += 1

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = id(writer)
        self._admit(key, writer)
        try:
            await self._requests(key, reader, writer)
        except (ConnectionError, OSError):
            pass  # the client went away or was too slow: nothing to tell it
        finally:
            self._open.pop(key, None)
            self._pending.pop(key, None)
            writer.transport.abort()

    async def _requests(self, key: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one connection until it closes, times out or asks to close."""
        limits = self.limits
        timeout = limits.read_timeout
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            except asyncio.LimitOverrunError:
                await self._send(
                    writer,
                    *_plain("431 Request Header Fields Too Large", "request headers over 16 KiB"),
                    keep_alive=False,
                )
                return
            self._pending.pop(key, None)  # a complete request: no longer an eviction candidate
            method, target, keep_alive, problem = self._parse(head)
            if problem is not None:
                await self._send(writer, *problem, keep_alive=False)
                return
            if self._in_flight >= 2 * limits.workers:
                result = _plain("503 Service Unavailable", "busy: too many requests at once")
            else:
                self._in_flight += 1
                try:
                    result = await self._loop.run_in_executor(self._pool, _call_app, self.app, "GET", target)
                except Exception:
                    log.exception("rendering %s failed", target)
                    result = _plain("500 Internal Server Error", "the agent failed to render this")
                finally:
                    self._in_flight -= 1
            await self._send(writer, *result, keep_alive=keep_alive, head=method == "HEAD")
            if not keep_alive:
                return
            # Waiting for the next request on this connection: idle, so it may be evicted.
            self._pending[key] = writer
            timeout = limits.idle_timeout

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str, bool, tuple | None]:
        """Request line and headers -> method, target, keep-alive, or an error response."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "", "", False, _plain("400 Bad Request", "malformed request line")
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        if method not in ("GET", "HEAD"):
            return method, target, False, _plain("405 Method Not Allowed", "only GET and HEAD")
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            return method, target, False, _plain("400 Bad Request", "requests here take no body")
        connection = headers.get("connection", "")
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return method, target, keep_alive, None

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: str,
        headers: list[tuple[str, str]],
        chunks: list[bytes],
        *,
        keep_alive: bool,
        head: bool = False,
    ) -> None:
        """Write the response chunk by chunk, each one handed to the socket before the next is
        buffered, and dropped from ``chunks`` once written: the transport holds a chunk or so,
        not a second copy of the body. The client must take the whole response within
        ``write_timeout``."""
        deadline = self._loop.time() + self.limits.write_timeout
        length = sum(len(c) for c in chunks)
        if head:
            chunks.clear()
        chunks.reverse()  # popped from the end, in order
        # the headers go with the first chunk: a small response is one write, as before
        first = chunks.pop() if chunks else b""
        writer.write(_head(status, headers, length, keep_alive=keep_alive) + first)
        try:
            while True:
                await asyncio.wait_for(writer.drain(), max(0.0, deadline - self._loop.time()))
                if not chunks:
                    return
                writer.write(chunks.pop())
        except TimeoutError:
            raise ConnectionError("the client did not take the response in time") from None

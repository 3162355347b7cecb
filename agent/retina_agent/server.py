"""HTTP endpoints: /metrics (Prometheus text), /healthz, /readyz."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from retina_agent.status import PluginStates


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - wsgiref's signature
        pass


def make_app(registry: CollectorRegistry, states: PluginStates,
             extra: Callable[[], str] | None = None) -> Callable:
    """``extra`` renders more exposition text (the pod-level series) after the registry's."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body = generate_latest(registry)
            if extra is not None:
                body += extra().encode()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            body = {n: {"state": s.state, "reason": s.reason, **({"attach": s.attach}
                                                                 if s.attach else {})}
                    for n, s in states.snapshot().items()}
            status = "200 OK" if states.ready() else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps({"ready": states.ready(), "plugins": body}).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


class MetricsServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 states: PluginStates, extra: Callable[[], str] | None = None) -> None:
        self.httpd = make_server(host, port, make_app(registry, states, extra),
                                 server_class=_ThreadingServer, handler_class=_QuietHandler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""List-then-watch one kind of Kubernetes object, as client-go's reflector does, on raw JSON.

``Reflector(name, list_func, handler)`` runs in its own thread:

1. list the objects page by page (``limit`` + ``continue``) and hand them to
   ``handler.replace`` (which also forgets what is no longer there);
2. watch from the list's ``resourceVersion`` and hand each event to ``handler.apply``;
3. when the watch ends or the connection breaks, watch again from the last ``resourceVersion``
   seen (after a short back-off while the API server is unreachable);
4. on ``410 Gone`` (the version is older than the server's history) list again.

The handler keeps its data throughout, so lookups answer from the last known state while the
API server is away. Objects are never turned into ``kubernetes`` model classes: responses are
read with ``_preload_content=False`` and parsed as JSON, and the handler keeps what it needs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import ijson
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class Handler(Protocol):
    def replace(self, objects: Iterator[Obj]) -> None:
        """Take the full list of objects (an iterator over pages); drop the ones not in it."""

    def apply(self, event_type: str, obj: Obj) -> None:
        """Take one watch event: ``ADDED``, ``MODIFIED`` or ``DELETED``."""


class Reflector:
    """Keep ``handler`` in step with one collection of the API server (see the module doc)."""

    def __init__(
        self,
        name: str,
        list_func: Callable[..., Any],
        handler: Handler,
        *,
        selectors: dict[str, str] | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
        max_backoff: float = 2.0,
    ) -> None:
        self.name = name
        self._list_func = list_func
        self._handler = handler
        self._selectors = dict(selectors or {})
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # the first list has been handed over
        # the API server has answered: with the first list, or that it does not serve the
        # resource (404: a CRD not installed; no such object can exist until it is)
        self.answered = threading.Event()
        self.connected = False
        self.lists = 0  # completed lists (the first one included)
        self.reconnects = 0  # connections re-established after a failure
        self.last_error = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        current = self._watch
        if current is not None:
            current.stop()  # shuts the socket down, so a blocked read returns
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        resource_version: str | None = None
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                    self.synced.set()
                    self.answered.set()
                resource_version = self._watch_from(resource_version)
                backoff = 0.1
            except ApiException as exc:
                if exc.status == 410:
                    log.info(
                        "%s: resourceVersion %s is gone from the API server's history; listing again",
                        self.name,
                        resource_version,
                    )
                    resource_version = None
                    continue
                if exc.status == 404:  # a CRD not installed: no such object can exist until it is
                    self._failed(
                        "404: not served",
                        log_as=f"the API server does not serve this resource (is its CRD installed?); "
                        f"asking again every {self._max_backoff:.0f}s",
                    )
                    self.answered.set()  # the answer to the first list: there are none
                else:
                    self._failed(f"API error {exc.status} {exc.reason}".strip())
            except Exception as exc:  # connection refused, reset, timeout: retried below
                if self._stop.is_set():
                    break
                self._failed(f"{type(exc).__name__}: {exc}")
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self._max_backoff)

    def _failed(self, message: str, log_as: str | None = None) -> None:
        """Not connected because of ``message``; logged once per new cause (``log_as``, or as a
        lost API server)."""
        if self.connected or message != self.last_error:
            text = log_as or f"lost the API server ({message}); retrying, lookups use the last known state"
            log.warning("%s: %s", self.name, text)
        self.connected = False
        self.last_error = message

    def _request(self, **kwargs: Any) -> Any:
        """Call the list function; a response means the API server is reachable again."""
        response = self._list_func(**self._selectors, **kwargs)
        if not self.connected:
            if self.last_error:
                self.reconnects += 1
                log.info("%s: connected to the API server again", self.name)
            self.connected = True
            self.last_error = ""
        return response

    def _list(self) -> str:
        """List every page into the handler; returns the list's resourceVersion."""
        result = {"resourceVersion": "", "continue": ""}

        def pages() -> Iterator[Obj]:
            while True:
                kwargs: dict[str, Any] = {
                    "limit": self._page_size,
                    "_preload_content": False,
                    "_request_timeout": (10, 60),
                }
                if result["continue"]:
                    kwargs["_continue"] = result["continue"]
                result["continue"] = ""
                response = self._request(**kwargs)
                try:
                    yield from _stream_list(response, result)
                finally:
                    response.release_conn()
                if not result["continue"]:
                    return

        self._handler.replace(pages())
        self.lists += 1
        return result["resourceVersion"]

    def _watch_from(self, resource_version: str) -> str:
        """Watch until the server ends the stream; returns the last resourceVersion seen."""

        # The wrapper has no docstring or return annotation, so Watch hands back raw dicts
        # (``deserialize=False`` would lose the ERROR events: kubernetes 37 raises KeyError).
        def call(**kwargs: Any) -> Any:
            return self._request(**kwargs)

        current = watch.Watch()
        self._watch = current
        try:
            for event in current.stream(
                call,
                resource_version=resource_version,
                timeout_seconds=self._watch_timeout,
                allow_watch_bookmarks=True,
                _request_timeout=(10, self._watch_timeout + 30),
            ):
                if self._stop.is_set():
                    break
                obj = event.get("raw_object") or event.get("object") or {}
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self._handler.apply(event["type"], obj)
                if version:
                    resource_version = version
        finally:
            self._watch = None
        return resource_version


def _stream_list(response: Any, metadata: dict[str, str]) -> Iterator[Obj]:
    """The items of a list response, parsed one at a time as they arrive (ijson), so that a
    server ignoring ``limit`` never makes us hold the whole list; fills ``resourceVersion`` and
    ``continue`` into ``metadata``."""
    builder: ijson.ObjectBuilder | None = None
    for prefix, event, value in ijson.parse(response, buf_size=65536, use_float=True):
        if prefix == "items.item" and event == "start_map":
            builder = ijson.ObjectBuilder()
        if builder is not None:
            builder.event(event, value)
            if prefix == "items.item" and event == "end_map":
                yield builder.value
                builder = None
        elif prefix in ("metadata.resourceVersion", "metadata.continue"):
            metadata[prefix.removeprefix("metadata.")] = value

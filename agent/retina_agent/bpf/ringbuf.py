"""Consume a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) by fd with libbpf, on a thread.

For events that are rare by nature (DNS messages); everything per packet stays in maps.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

from retina_agent.bpf.libbpf import lib as _libbpf

log = logging.getLogger(__name__)

SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class RingBuffer:
    def __init__(self, map_fd: int, on_event: Callable[[bytes], None], name: str) -> None:
        lib = _libbpf()
        lib.ring_buffer__new.restype = ctypes.c_void_p
        lib.ring_buffer__new.argtypes = [ctypes.c_int, SAMPLE_FN, ctypes.c_void_p, ctypes.c_void_p]
        lib.ring_buffer__poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._on_event = on_event
        self._callback = SAMPLE_FN(self._sample)  # keep a reference: C holds the pointer
        self._rb = lib.ring_buffer__new(map_fd, self._callback, None, None)
        if not self._rb:
            raise OSError(ctypes.get_errno(), f"ring_buffer__new failed for {name}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ringbuf-{name}", daemon=True)

    def _sample(self, _ctx, data, size) -> int:
        try:
            self._on_event(ctypes.string_at(data, size))
        except Exception:
            log.exception("handling a ring buffer event failed")
        return 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rc = self._lib.ring_buffer__poll(self._rb, 200)
            if rc < 0 and rc != -4:  # -EINTR is fine
                log.warning("ring_buffer__poll returned %d", rc)
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._rb:
            self._lib.ring_buffer__free(self._rb)
            self._rb = None

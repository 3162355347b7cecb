"""After ``return_large_buffers`` a freed scrape-sized buffer goes back to the system: glibc's
sliding mmap threshold would otherwise keep the next, slightly smaller one in the heap."""

from __future__ import annotations

import ctypes
import platform

import pytest

from retina_agent.podlevel.malloc import LARGE_BUFFER, return_large_buffers


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc's")
def test_a_large_buffer_after_a_larger_one_is_mmapped() -> None:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    def mmapped() -> int:
        return libc.mallinfo2().hblkhd

    assert return_large_buffers()
    first = bytearray(14 << 20)  # a scrape's text; freed, it would raise the sliding threshold
    del first
    before = mmapped()
    second = bytearray(13 << 20)
    assert mmapped() - before >= 13 << 20, "the buffer came from the heap: it would stay in RSS"
    del second
    assert mmapped() == before
    small = bytearray(LARGE_BUFFER // 2)  # harvest batch buffers stay in the heap
    assert mmapped() == before
    del small

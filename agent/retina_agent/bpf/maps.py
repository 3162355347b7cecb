"""Read and write BPF maps by fd through libbpf (``libbpf.lib``), with ctypes key/value types."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Generic, TypeVar

from retina_agent.bpf.libbpf import lib as _libbpf
from retina_agent.bpf.syscall import map_info

K = TypeVar("K", bound=ctypes.Structure | ctypes._SimpleCData)  # type: ignore[name-defined]
V = TypeVar("V", bound=ctypes.Structure | ctypes._SimpleCData)  # type: ignore[name-defined]


#: The kernel's own "operation not supported" (524, not a libc errno): what a map type without
#: batch operations answers a batch lookup with (5.10's per-CPU arrays).
ENOTSUPP = 524


@cache
def possible_cpus() -> int:
    """Number of possible CPUs: the length of every per-CPU map value array."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


class MapLayoutError(ValueError):
    """A ctypes key or value type does not match the size of the kernel map's."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"{what}: {os.strerror(err)}")


class BpfMap(Generic[K, V]):
    """A BPF hash or array map. ``percpu=True`` returns a list of per-CPU values."""

    def __init__(self, fd: int, key_type: type[K], value_type: type[V], percpu: bool = False):
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.percpu = percpu
        if percpu and ctypes.sizeof(value_type) % 8:
            raise ValueError("per-CPU value types must be a multiple of 8 bytes")
        self._check_layout()
        self._value_buf_type = value_type * possible_cpus() if percpu else value_type

    def _check_layout(self) -> None:
        """The ctypes types must have the sizes the kernel map was created with: a struct that
        drifted from its C twin would otherwise read garbage (or overrun a buffer)."""
        try:
            info = map_info(self.fd)
        except OSError:
            return  # no BPF_OBJ_GET_INFO_BY_FD (very old kernel): nothing to compare with
        for what, kind, size in (
            ("key", self.key_type, info.key_size),
            ("value", self.value_type, info.value_size),
        ):
            if ctypes.sizeof(kind) != size:
                raise MapLayoutError(
                    f"BPF map {info.name or info.id}: its {what} is {size} bytes in the kernel "
                    f"but {kind.__name__} is {ctypes.sizeof(kind)} bytes: the Python type "
                    "and the C struct disagree (fix the ctypes fields to match the C)"
                )

    def lookup(self, key: K) -> V | list[V] | None:
        buf = self._value_buf_type()
        rc = _libbpf().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(buf))
        if rc != 0:
            if ctypes.get_errno() == errno.ENOENT or rc == -errno.ENOENT:
                return None
            _check(rc, "bpf_map_lookup_elem")
        return list(buf) if self.percpu else buf

    def keys(self) -> Iterator[K]:
        lib = _libbpf()
        prev: K | None = None
        while True:
            nxt = self.key_type()
            rc = lib.bpf_map_get_next_key(
                self.fd, ctypes.byref(prev) if prev is not None else None, ctypes.byref(nxt)
            )
            if rc != 0:
                return
            yield nxt
            prev = nxt

    def items(self) -> Iterator[tuple[K, V | list[V]]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def raw_items(self, batch: int = 4096) -> Iterator[tuple[bytes, bytes]]:
        """Every (key bytes, value bytes) pair, read in batches (one syscall per batch).

        For per-CPU maps the value bytes hold one value per possible CPU. Falls back to
        key-by-key reads where the kernel has no batch operations (before 5.6, or none for this
        map type).
        """
        lib = _libbpf()
        key_size = ctypes.sizeof(self.key_type)
        value_size = ctypes.sizeof(self._value_buf_type)
        keys = ctypes.create_string_buffer(key_size * batch)
        values = ctypes.create_string_buffer(value_size * batch)
        token_in = ctypes.create_string_buffer(max(key_size, 8))
        token_out = ctypes.create_string_buffer(max(key_size, 8))
        first = True
        while True:
            count = ctypes.c_uint32(batch)
            rc = lib.bpf_map_lookup_batch(
                self.fd, None if first else token_in, token_out, keys, values, ctypes.byref(count), None
            )
            err = ctypes.get_errno() if rc else 0
            if rc and err not in (errno.ENOENT,):
                if first and err in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, ENOTSUPP):
                    yield from self._raw_items_one_by_one()
                    return
                _check(rc, "bpf_map_lookup_batch")
            n = count.value
            kb, vb = keys.raw, values.raw
            for i in range(n):
                yield kb[i * key_size : (i + 1) * key_size], vb[i * value_size : (i + 1) * value_size]
            if rc:  # ENOENT: that was the last batch
                return
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def _raw_items_one_by_one(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            raw_key = bytes(key)
            raw_value = self.lookup_raw(raw_key)  # all CPUs' values in one buffer, as a batch gives
            if raw_value is not None:
                yield raw_key, raw_value

    def lookup_raw(self, key: bytes) -> bytes | None:
        """The value bytes of ``key`` (all CPUs' values for a per-CPU map), or None."""
        kbuf = ctypes.create_string_buffer(key, len(key))
        buf = self._value_buf_type()
        rc = _libbpf().bpf_map_lookup_elem(self.fd, kbuf, ctypes.byref(buf))
        if rc != 0:
            if ctypes.get_errno() == errno.ENOENT or rc == -errno.ENOENT:
                return None
            _check(rc, "bpf_map_lookup_elem")
        return bytes(buf)

    def delete_raw(self, key: bytes) -> bool:
        buf = ctypes.create_string_buffer(key, len(key))
        return _libbpf().bpf_map_delete_elem(self.fd, buf) == 0

    def update_raw(self, key: bytes, value: bytes, flags: int = 0) -> None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value, len(value))
        _check(_libbpf().bpf_map_update_elem(self.fd, kbuf, vbuf, flags), "bpf_map_update_elem")

    def update(self, key: K, value: V, flags: int = 0) -> None:
        _check(
            _libbpf().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags),
            "bpf_map_update_elem",
        )

    def delete(self, key: K) -> bool:
        return _libbpf().bpf_map_delete_elem(self.fd, ctypes.byref(key)) == 0

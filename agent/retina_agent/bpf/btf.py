"""Read struct member offsets and enum names from the running kernel's BTF, through libbpf.

The BPF objects are built once for every kernel, so a program that must read a kernel struct
(``sk_buff``) gets the offsets from ``/sys/kernel/btf/vmlinux`` at load time, as constants.
libbpf parses the BTF (``btf__parse_raw``) in C: about 6 MB for a 6.x kernel, where building
Python objects for its ~150,000 types cost the loader child about 67 MB.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from retina_agent.bpf.libbpf import BtfType, lib

VMLINUX = Path("/sys/kernel/btf/vmlinux")

KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64 = 4, 5, 6, 19


class BtfError(Exception):
    """BTF is missing, malformed, or lacks the type or member asked for."""


class _Member(ctypes.Structure):  # struct btf_member
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class _Enum(ctypes.Structure):  # struct btf_enum
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class _Enum64(ctypes.Structure):  # struct btf_enum64
    _fields_ = [("name_off", ctypes.c_uint32), ("lo", ctypes.c_uint32), ("hi", ctypes.c_uint32)]


class Btf:
    """The types of one BTF blob (by default the running kernel's)."""

    def __init__(self, handle: int) -> None:
        self._btf = handle

    @classmethod
    def from_kernel(cls, path: Path = VMLINUX) -> Btf:
        if not path.exists():
            raise BtfError(f"{path} does not exist: the kernel was built without CONFIG_DEBUG_INFO_BTF")
        handle = lib().btf__parse_raw(os.fsencode(path))
        if not handle:
            err = ctypes.get_errno() or errno.EINVAL
            raise BtfError(f"cannot read BTF from {path}: {os.strerror(err)}")
        return cls(handle)

    def __del__(self) -> None:
        if getattr(self, "_btf", None):
            lib().btf__free(self._btf)
            self._btf = None

    def _type(self, type_id: int) -> BtfType:
        t = lib().btf__type_by_id(self._btf, type_id)
        if not t:
            raise BtfError(f"BTF has no type {type_id}")
        return t.contents

    def _name(self, off: int) -> str:
        return (lib().btf__name_by_offset(self._btf, off) or b"").decode()

    def _find_id(self, name: str, kind: int) -> int:
        return lib().btf__find_by_name_kind(self._btf, name.encode(), kind)

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in ``struct struct_name``, looking into anonymous members."""
        tid = self._find_id(struct_name, KIND_STRUCT)
        if tid < 0:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        found = self._find(self._type(tid), member, 0)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member}")
        if found % 8:
            raise BtfError(f"{struct_name}.{member} is a bit-field")
        return found // 8

    def _find(self, t: BtfType, member: str, base_bits: int) -> int | None:
        for m in t.items(_Member):
            bit_off = m.offset & 0xFFFFFF if t.kind_flag else m.offset
            name = self._name(m.name_off) if m.name_off else ""
            if name == member:
                return base_bits + bit_off
            if not name:  # an anonymous struct or union: its members are the outer one's
                inner = self._type(lib().btf__resolve_type(self._btf, m.type))
                if inner.kind in (KIND_STRUCT, KIND_UNION):
                    hit = self._find(inner, member, base_bits + bit_off)
                    if hit is not None:
                        return hit
        return None

    def enum(self, name: str) -> dict[int, str]:
        tid = self._find_id(name, KIND_ENUM)
        if tid > 0:
            return {e.val: self._name(e.name_off) for e in self._type(tid).items(_Enum)}
        tid = self._find_id(name, KIND_ENUM64)
        if tid > 0:
            return {(e.hi << 32) | e.lo: self._name(e.name_off) for e in self._type(tid).items(_Enum64)}
        raise BtfError(f"enum {name} is not in the kernel's BTF")

"""Read struct member offsets and enum names from the running kernel's BTF.

The kernel headers bcc compiles against may belong to another kernel (see PLATFORM.md), so a
program that must read a kernel struct (``sk_buff``) gets the offsets from
``/sys/kernel/btf/vmlinux`` at run time, passed to the compile as ``-D`` macros. This is a
small reader of the BTF format (linux/btf.h): header, type section, string section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_TYPE_TAG, KIND_ENUM64 = 18, 19
# Bytes that follow ``struct btf_type`` (12 bytes) for each kind: (fixed, per vlen item).
_TRAILER = {
    1: (4, 0),
    2: (0, 0),
    3: (12, 0),
    4: (0, 12),
    5: (0, 12),
    6: (0, 8),
    7: (0, 0),
    8: (0, 0),
    9: (0, 0),
    10: (0, 0),
    11: (0, 0),
    12: (0, 0),
    13: (0, 8),
    14: (4, 0),
    15: (0, 12),
    16: (0, 0),
    17: (4, 0),
    18: (0, 0),
    19: (0, 12),
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BtfError(Exception):
    """BTF is missing, malformed, or lacks the type or member asked for."""


@dataclass
class BtfType:
    kind: int
    name: str
    size_or_type: int
    kind_flag: bool
    members: list[tuple[str, int, int]] = field(default_factory=list)  # name, type id, bit off
    enum_values: dict[int, str] = field(default_factory=dict)


class Btf:
    """The types of one BTF blob (by default the running kernel's)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too small")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError("not a little-endian BTF blob")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[BtfType | None] = [None]  # type id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        self._parse(data[hdr_len + type_off : hdr_len + type_off + type_len])

    @classmethod
    def from_kernel(cls, path: Path = VMLINUX) -> Btf:
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            raise BtfError(
                f"{path} does not exist: the kernel was built without CONFIG_DEBUG_INFO_BTF"
            ) from None

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end].decode()

    def _parse(self, blob: bytes) -> None:
        pos = 0
        while pos < len(blob):
            name_off, info, size_or_type = struct.unpack_from("<III", blob, pos)
            pos += 12
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
            if kind not in _TRAILER:
                raise BtfError(f"unknown BTF kind {kind}")
            t = BtfType(kind, self._str(name_off) if name_off else "", size_or_type, kind_flag)
            if kind in (KIND_STRUCT, KIND_UNION):
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", blob, pos + 12 * i)
                    bit_off = m_off & 0xFFFFFF if kind_flag else m_off
                    t.members.append((self._str(m_name) if m_name else "", m_type, bit_off))
            elif kind == KIND_ENUM:
                for i in range(vlen):
                    e_name, e_val = struct.unpack_from("<Ii", blob, pos + 8 * i)
                    t.enum_values[e_val] = self._str(e_name)
            elif kind == KIND_ENUM64:
                for i in range(vlen):
                    e_name, lo, hi = struct.unpack_from("<III", blob, pos + 12 * i)
                    t.enum_values[(hi << 32) | lo] = self._str(e_name)
            fixed, per_item = _TRAILER[kind]
            pos += fixed + per_item * vlen
            if t.name and (kind, t.name) not in self._by_name:
                self._by_name[(kind, t.name)] = len(self.types)
            self.types.append(t)

    def _resolve(self, type_id: int) -> BtfType:
        t = self.types[type_id]
        while t is not None and t.kind in _MODIFIERS:
            t = self.types[t.size_or_type]
        if t is None:
            raise BtfError("member resolves to void")
        return t

    def struct(self, name: str) -> BtfType:
        tid = self._by_name.get((KIND_STRUCT, name))
        if tid is None:
            raise BtfError(f"struct {name} is not in the kernel's BTF")
        return self.types[tid]  # type: ignore[return-value]

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in ``struct struct_name``, looking into anonymous members."""
        found = self._find(self.struct(struct_name), member, 0)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member}")
        if found % 8:
            raise BtfError(f"{struct_name}.{member} is a bit-field")
        return found // 8

    def _find(self, t: BtfType, member: str, base_bits: int) -> int | None:
        for name, type_id, bit_off in t.members:
            if name == member:
                return base_bits + bit_off
            if not name:
                inner = self._resolve(type_id)
                if inner.kind in (KIND_STRUCT, KIND_UNION):
                    hit = self._find(inner, member, base_bits + bit_off)
                    if hit is not None:
                        return hit
        return None

    def enum(self, name: str) -> dict[int, str]:
        for kind in (KIND_ENUM, KIND_ENUM64):
            tid = self._by_name.get((kind, name))
            if tid is not None:
                return dict(self.types[tid].enum_values)  # type: ignore[union-attr]
        raise BtfError(f"enum {name} is not in the kernel's BTF")

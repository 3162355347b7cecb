"""A small ctypes binding to Debian's libbpf (``libbpf.so.1``, 1.1 on bookworm): open a
prebuilt BPF object, set its load-time constants and map sizes, load it, hand out fds.

Constants are ``const volatile`` globals of the C, which clang puts in the object's
``.rodata`` section; libbpf turns that section into a one-element array map that it fills from
``bpf_map__initial_value`` and freezes at load, so the verifier sees each constant as a known
value and drops the branches it turns off (since kernel 5.2). A constant is found by name in
the object's own BTF: the ``.rodata`` DATASEC lists every variable with its offset and size
(libbpf fixes the offsets at open time), so no offset table has to be produced at build time
and kept in step with the object.

libbpf reports through a print callback (``libbpf_set_print``): its messages, with the
verifier's log when a program is rejected, are collected per object for the error message.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from functools import cache
from pathlib import Path

BTF_KIND_VAR, BTF_KIND_DATASEC = 14, 15
BPF_MAP_TYPE_RINGBUF = 27
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
VERIFIER_LINES = 8  # of the verifier's log, where the lines that say why are looked for

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class LibbpfError(Exception):
    """libbpf could not open, configure or load an object; the message has libbpf's words."""


class BtfType(ctypes.Structure):
    """``struct btf_type`` (linux/btf.h); its kind's items follow it in memory."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]

    @property
    def kind(self) -> int:
        return (self.info >> 24) & 0x1F

    @property
    def vlen(self) -> int:
        return self.info & 0xFFFF

    @property
    def kind_flag(self) -> bool:
        return bool(self.info >> 31)

    def items(self, item: type[ctypes.Structure]) -> ctypes.Array:
        return (item * self.vlen).from_address(ctypes.addressof(self) + ctypes.sizeof(BtfType))


class _VarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


def _sig(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


@cache
def lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    _sig(lib, "libbpf_set_print", p, _PRINT_FN)
    _sig(lib, "bpf_object__open_file", p, s, p)
    _sig(lib, "bpf_object__load", i, p)
    _sig(lib, "bpf_object__close", None, p)
    _sig(lib, "bpf_object__btf", p, p)
    _sig(lib, "bpf_object__find_map_by_name", p, p, s)
    _sig(lib, "bpf_object__find_program_by_name", p, p, s)
    _sig(lib, "bpf_map__name", s, p)
    _sig(lib, "bpf_map__fd", i, p)
    _sig(lib, "bpf_map__type", i, p)
    _sig(lib, "bpf_map__set_max_entries", i, p, ctypes.c_uint32)
    _sig(lib, "bpf_map__initial_value", p, p, ctypes.POINTER(ctypes.c_size_t))
    _sig(lib, "bpf_program__fd", i, p)
    _sig(lib, "btf__parse_raw", p, s)
    _sig(lib, "btf__free", None, p)
    _sig(lib, "btf__resolve_type", i, p, ctypes.c_uint32)
    _sig(lib, "btf__find_by_name_kind", ctypes.c_int32, p, s, ctypes.c_uint32)
    _sig(lib, "btf__type_by_id", ctypes.POINTER(BtfType), p, ctypes.c_uint32)
    _sig(lib, "btf__name_by_offset", s, p, ctypes.c_uint32)
    # map elements by fd (maps.BpfMap)
    _sig(lib, "bpf_map_lookup_elem", i, i, p, p)
    _sig(lib, "bpf_map_update_elem", i, i, p, p, ctypes.c_uint64)
    _sig(lib, "bpf_map_delete_elem", i, i, p)
    _sig(lib, "bpf_map_get_next_key", i, i, p, p)
    _sig(lib, "bpf_map_lookup_batch", i, i, p, p, p, p, ctypes.POINTER(ctypes.c_uint32), p)
    return lib


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    libc.vsnprintf.restype = ctypes.c_int
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    return libc


# libbpf's print callback is process-wide: its lines go to the log of the object being worked
# on (one at a time, under this lock).
_log_lock = threading.Lock()
_log: list[str] = []


# va_copy by hand: where va_list is a struct (x86_64: 24 bytes, aarch64: 32) the callback gets a
# pointer to it, and a copy of those bytes is a va_list of its own.
_VA_LIST_SIZE = {"x86_64": 24, "aarch64": 32}.get(platform.machine())
_FALLBACK_MESSAGE = 1 << 16


def _format(fmt: bytes, args: int) -> str:
    """One message, whole: libbpf prints the verifier's log in one call, and the reason is at its
    end, so the length is measured first (on a copy of the va_list, which vsnprintf consumes)."""
    size = _FALLBACK_MESSAGE
    if _VA_LIST_SIZE:
        copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
        ctypes.memmove(copy, args, _VA_LIST_SIZE)
        size = _libc().vsnprintf(None, 0, fmt, ctypes.addressof(copy)) + 1
    buf = ctypes.create_string_buffer(max(size, 1))
    _libc().vsnprintf(buf, len(buf), fmt, args)
    return buf.value.decode(errors="replace")


@_PRINT_FN
def _print(level: int, fmt: bytes, args: int) -> int:
    if level <= LIBBPF_INFO:
        _log.append(_format(fmt, args))
    return 0


@cache
def _install_print() -> None:
    lib().libbpf_set_print(_print)


def verifier_tail(lines: list[str]) -> list[str]:
    """Why the verifier refused a program, from its log in libbpf's output: the C line it was
    at (``; <source> @ file.c:N``, from the object's BTF line info), the instruction it stopped
    at and its reason (the lines before its ``processed N insns`` summary)."""
    text = "".join(lines)
    start = text.rfind("-- BEGIN PROG LOAD LOG --")
    if start < 0:
        return []
    body = text[start:].split("\n", 1)[1] if "\n" in text[start:] else ""
    log = [ln.strip() for ln in body.split("-- END PROG LOAD LOG --", 1)[0].splitlines() if ln.strip()]
    end = next((i for i in range(len(log) - 1, -1, -1) if log[i].startswith("processed ")), len(log))
    last = [ln[:200] for ln in log[max(0, end - VERIFIER_LINES) : end] if not ln.startswith(";")][-2:]
    source = next((ln for ln in reversed(log[:end]) if ln.startswith(";") and " @ " in ln), None)
    return ([source[1:].strip()] if source else []) + last


def _summary(lines: list[str]) -> str:
    """libbpf's own error lines, without the verifier's log."""
    text = "".join(lines)
    start = text.find("-- BEGIN PROG LOAD LOG --")
    end = text.find("-- END PROG LOAD LOG --")
    if start >= 0:
        text = text[:start] + (text[end + len("-- END PROG LOAD LOG --") :] if end >= 0 else "")
    kept = [ln.strip().removeprefix("libbpf: ") for ln in text.splitlines()]
    kept = [ln for ln in kept if ln and not ln.endswith(":") and not ln.startswith("failed to load object")]
    return " | ".join(kept[-4:])


class BpfObject:
    """One opened BPF object file. ``set_constants`` and ``set_max_entries`` before ``load``;
    then ``program_fd`` and ``map_fd`` (owned by the object: dup them to keep them)."""

    def __init__(self, path: Path) -> None:
        _install_print()
        self.path = Path(path)
        self.name = self.path.name
        self._loaded = False
        with _log_lock:
            _log.clear()
            self._obj = lib().bpf_object__open_file(os.fsencode(self.path), None)
            err = ctypes.get_errno()
            lines = list(_log)
        if not self._obj:
            raise LibbpfError(
                f"cannot open {self.path}: {os.strerror(err or errno.EINVAL)}: {_summary(lines)}"
            )

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    # -- before load ---------------------------------------------------------------------------
    def _map(self, name: str) -> int:
        m = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise LibbpfError(f"{self.name} has no map {name}")
        return m

    def constants(self) -> dict[str, tuple[int, int]]:
        """Every ``const volatile`` of the object: name -> (offset in .rodata, size)."""
        so = lib()
        btf = so.bpf_object__btf(self._obj)
        if not btf:
            return {}
        sec_id = so.btf__find_by_name_kind(btf, b".rodata", BTF_KIND_DATASEC)
        if sec_id < 0:
            return {}
        sec = so.btf__type_by_id(btf, sec_id).contents
        found = {}
        for info in sec.items(_VarSecinfo):
            var = so.btf__type_by_id(btf, info.type).contents
            if var.kind == BTF_KIND_VAR:
                found[so.btf__name_by_offset(btf, var.name_off).decode()] = (info.offset, info.size)
        return found

    def set_constants(self, values: dict[str, int]) -> None:
        """Write ``values`` (name -> int) into .rodata; an unknown name is an error (a typo or
        an object that predates the constant), so is a value that does not fit."""
        if not values:
            return
        layout = self.constants()
        unknown = sorted(set(values) - set(layout))
        if unknown:
            raise LibbpfError(
                f"{self.name} has no constant {', '.join(unknown)} (known: {', '.join(sorted(layout))})"
            )
        size = ctypes.c_size_t()
        data = lib().bpf_map__initial_value(self._map(".rodata"), ctypes.byref(size))
        if not data:
            raise LibbpfError(f"{self.name}: .rodata has no initial value to set")
        for name, value in values.items():
            offset, width = layout[name]
            if offset + width > size.value:
                raise LibbpfError(f"{self.name}: constant {name} lies outside .rodata")
            try:
                raw = int(value).to_bytes(width, "little", signed=int(value) < 0)
            except OverflowError:
                raise LibbpfError(
                    f"{self.name}: constant {name}={value} does not fit in {width} bytes"
                ) from None
            ctypes.memmove(data + offset, raw, width)

    def set_max_entries(self, sizes: dict[str, int]) -> None:
        """Map sizes; a ring buffer's is in bytes, raised to a power-of-2 number of pages."""
        for name, n in sizes.items():
            m = self._map(name)
            if lib().bpf_map__type(m) == BPF_MAP_TYPE_RINGBUF:
                page = os.sysconf("SC_PAGE_SIZE")
                n = max(int(n), page)
                n = 1 << (n - 1).bit_length()
            if lib().bpf_map__set_max_entries(m, int(n)) != 0:
                raise LibbpfError(f"{self.name}: cannot set max_entries of {name} to {n}")

    # -- load ------------------------------------------------------------------------------------
    def load(self) -> None:
        with _log_lock:
            _log.clear()
            rc = lib().bpf_object__load(self._obj)
            lines = list(_log)
        if rc != 0:
            err = -rc if rc < 0 else (ctypes.get_errno() or errno.EINVAL)
            message = f"loading {self.name} failed: {os.strerror(err)}"
            summary = _summary(lines)
            if summary:
                message += f": {summary}"
            tail = verifier_tail(lines)
            if tail:
                message += " | verifier: " + " | ".join(tail)
            raise LibbpfError(message)
        self._loaded = True

    def program_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LibbpfError(f"{self.name} has no program {name}")
        fd = lib().bpf_program__fd(prog)
        if fd < 0:
            raise LibbpfError(f"{self.name}: program {name} is not loaded")
        return fd

    def map_fd(self, name: str) -> int:
        fd = lib().bpf_map__fd(self._map(name))
        if fd < 0:
            raise LibbpfError(f"{self.name}: map {name} is not created")
        return fd

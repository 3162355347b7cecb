"""The few bpf() commands Debian's libbpf 1.1 lacks or hides, as raw syscalls through ctypes.

libbpf1 1.1 (bookworm) predates TCX (kernel 6.6, libbpf 1.3): ``bpf_link_create`` there cannot
pass ``BPF_TCX_*`` options. The attribute layouts below are the kernel's UAPI ``union bpf_attr``
(stable by contract: fields are only ever appended), so the agent builds them itself:

- ``link_create_tcx``: a TCX bpf_link on an interface (dies with its last fd: with the agent);
- ``prog_query``: the program ids attached at a TCX hook (tests, coexistence checks);
- ``prog_info`` / ``map_info``: ``BPF_OBJ_GET_INFO_BY_FD`` (names, run_time_ns, key/value sizes);
- ``enable_stats``: ``BPF_ENABLE_STATS``, run-time accounting held on by an fd, not a sysctl;
- ``prog_test_run``: ``BPF_PROG_TEST_RUN``, a program run on a given packet in a kernel loop
  (the benchmark's cost per run without run-time accounting);
- ``attach_tracepoint``: a tracepoint perf event running a program (perf_event_open and two
  ioctls, as bcc and libbpf do), returned as the perf event fd: the agent enables and
  disables a plugin's tracepoints with ioctls on it, and closing it detaches the program.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# bpf() commands (include/uapi/linux/bpf.h, enum bpf_cmd)
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_ENABLE_STATS = 32
BPF_LINK_DETACH = 34
# enum bpf_attach_type
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
TCX_ATTACH_TYPES = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}
# attach flags (mprog): BPF_F_BEFORE with no relative program = the head of the chain
BPF_F_BEFORE = 1 << 3
BPF_STATS_RUN_TIME = 0

_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_ATTR_SIZE = 144  # >= every command used here; trailing zero bytes are accepted


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def bpf(cmd: int, attr: bytes | bytearray) -> int:
    """bpf(cmd, attr): the return value, or OSError with the kernel's errno."""
    number = _SYSCALL_BPF.get(platform.machine())
    if number is None:
        raise OSError(38, f"no bpf() syscall number known for {platform.machine()}")
    buf = ctypes.create_string_buffer(bytes(attr).ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    rc = _libc().syscall(number, cmd, buf, _ATTR_SIZE)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd {cmd}): {os.strerror(err)}")
    return rc


def link_create_tcx(prog_fd: int, ifindex: int, direction: str, *, first: bool = True) -> int:
    """Attach ``prog_fd`` at the TCX hook of ``ifindex``; returns the bpf_link fd.

    ``first``: at the head of the chain (BPF_F_BEFORE, no relative program), so a program
    that ends the chain (a CNI's redirect) cannot hide packets from ours; ours return
    TC_ACT_UNSPEC (TCX_NEXT), so every program after ours still runs.
    """
    flags = BPF_F_BEFORE if first else 0
    attr = struct.pack("=IIII", prog_fd, ifindex, TCX_ATTACH_TYPES[direction], flags)
    return bpf(BPF_LINK_CREATE, attr)


def prog_query(ifindex: int, attach_type: int) -> list[int]:
    """Ids of the programs attached at one TCX hook (empty when none)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = bytearray(64)
    struct.pack_into("=IIII", attr, 0, ifindex, attach_type, 0, 0)
    struct.pack_into("=QI", attr, 16, ctypes.addressof(ids), 64)
    number = _SYSCALL_BPF[platform.machine()]
    buf = ctypes.create_string_buffer(bytes(attr).ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    if _libc().syscall(number, BPF_PROG_QUERY, buf, _ATTR_SIZE) < 0:
        err = ctypes.get_errno()
        if err in (2, 22):  # ENOENT: nothing attached; EINVAL: no TCX on this kernel
            return []
        raise OSError(err, f"BPF_PROG_QUERY: {os.strerror(err)}")
    count = struct.unpack_from("=I", buf.raw, 24)[0]
    return list(ids[:count])


def _obj_info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, size, ctypes.addressof(info)))
    return info.raw


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    map_ids: tuple[int, ...]
    run_time_ns: int
    run_cnt: int


def prog_info(fd: int) -> ProgInfo:
    map_ids = (ctypes.c_uint32 * 64)()
    info = ctypes.create_string_buffer(216)
    struct.pack_into("=IQ", info, 52, 64, ctypes.addressof(map_ids))
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, 216, ctypes.addressof(info)))
    raw = info.raw
    nr_maps = struct.unpack_from("=I", raw, 52)[0]
    name = raw[64:80].split(b"\0", 1)[0].decode()
    run_time, run_cnt = struct.unpack_from("=QQ", raw, 192)
    return ProgInfo(
        id=struct.unpack_from("=I", raw, 4)[0],
        name=name,
        map_ids=tuple(map_ids[: min(nr_maps, 64)]),
        run_time_ns=run_time,
        run_cnt=run_cnt,
    )


@dataclass(frozen=True)
class MapInfo:
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    raw = _obj_info(fd, 40)
    _type, ident, key_size, value_size, max_entries, _flags = struct.unpack_from("=6I", raw)
    return MapInfo(
        id=ident,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        name=raw[24:40].split(b"\0", 1)[0].decode(),
    )


def prog_fd_by_id(prog_id: int) -> int:
    return bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("=I", prog_id))


def map_fd_by_id(map_id: int) -> int:
    return bpf(BPF_MAP_GET_FD_BY_ID, struct.pack("=I", map_id))


def enable_stats() -> int:
    """Turn on run_time_ns/run_cnt accounting while the returned fd stays open."""
    return bpf(BPF_ENABLE_STATS, struct.pack("=I", BPF_STATS_RUN_TIME))


SKB_CTX_IFINDEX = 40  # offsetof(struct __sk_buff, ifindex)
SKB_CTX_SIZE = 48  # up to and including tc_index: the fields a test run may set that we use


def prog_test_run(prog_fd: int, packet: bytes, repeat: int, ifindex: int = 0) -> tuple[int, int]:
    """Run a TC program ``repeat`` times on ``packet`` (an Ethernet frame) in the kernel, as if
    it arrived on ``ifindex``; returns (its last return value, mean ns per run as the kernel
    timed the loop)."""
    number = _SYSCALL_BPF.get(platform.machine())
    if number is None:
        raise OSError(38, f"no bpf() syscall number known for {platform.machine()}")
    data = ctypes.create_string_buffer(packet, len(packet))
    ctx = ctypes.create_string_buffer(SKB_CTX_SIZE)
    struct.pack_into("=I", ctx, SKB_CTX_IFINDEX, ifindex)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # test: prog_fd retval data_size_in data_size_out data_in data_out repeat duration
    #       ctx_size_in ctx_size_out ctx_in ctx_out
    struct.pack_into(
        "=IIIIQQIIIIQQ", attr, 0, prog_fd, 0, len(packet), 0, ctypes.addressof(data), 0,
        repeat, 0, SKB_CTX_SIZE, 0, ctypes.addressof(ctx), 0,
    )  # fmt: skip
    if _libc().syscall(number, BPF_PROG_TEST_RUN, attr, _ATTR_SIZE) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(BPF_PROG_TEST_RUN): {os.strerror(err)}")
    retval, duration = struct.unpack_from("=I", attr, 4)[0], struct.unpack_from("=I", attr, 36)[0]
    return retval, duration


def tcx_supported() -> bool:
    """Does the kernel know BPF_TCX_* (6.6+)? A query on loopback says so without attaching."""
    number = _SYSCALL_BPF.get(platform.machine())
    if number is None:
        return False
    ids = (ctypes.c_uint32 * 1)()
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=II", attr, 0, 1, BPF_TCX_INGRESS)
    struct.pack_into("=QI", attr, 16, ctypes.addressof(ids), 1)
    buf = ctypes.create_string_buffer(bytes(attr), _ATTR_SIZE)
    if _libc().syscall(number, BPF_PROG_QUERY, buf, _ATTR_SIZE) == 0:
        return True
    return ctypes.get_errno() in (2, 28)  # ENOENT: hook known, empty; ENOSPC: more than 1


PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408
_SYSCALL_PERF_EVENT_OPEN = {
    "x86_64": 298,
    "aarch64": 241,
    "armv7l": 364,
    "ppc64le": 319,
    "s390x": 331,
    "riscv64": 241,
}
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5: every kernel since 4.1 takes it


def attach_tracepoint(prog_fd: int, tracepoint: str, tracefs: Path | None = None) -> int:
    """Run ``prog_fd`` on ``category:event``; returns the perf event fd that holds the attachment."""
    from retina_agent.bpf.tracefs import TracepointError, tracefs_root

    category, _, event = tracepoint.partition(":")
    id_file = (tracefs or tracefs_root()) / "events" / category / event / "id"
    try:
        tp_id = int(id_file.read_text())
    except FileNotFoundError:
        raise TracepointError(
            f"tracepoint {tracepoint} does not exist on this kernel (no {id_file})"
        ) from None
    number = _SYSCALL_PERF_EVENT_OPEN.get(platform.machine())
    if number is None:
        raise OSError(38, f"no perf_event_open() syscall number known for {platform.machine()}")
    attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    # type size config sample_period sample_type ... wakeup_events (offset 48)
    struct.pack_into("=IIQQQ", attr, 0, PERF_TYPE_TRACEPOINT, _PERF_ATTR_SIZE, tp_id, 1, PERF_SAMPLE_RAW)
    struct.pack_into("=I", attr, 48, 1)
    fd = _libc().syscall(number, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open({tracepoint}): {os.strerror(err)}")
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, f"attaching a program to {tracepoint}: {os.strerror(exc.errno)}") from None
    return fd

"""Merge per-node capture tarballs into one pcapng: every node's packets in time order.

Each node becomes one pcapng interface (per link type) whose ``if_name`` is the node name and
whose ``if_description`` says which tarball and file the packets came from, so Wireshark shows
the node of every packet (``frame.interface_name``). Packets keep their timestamps (microsecond
resolution) and captured bytes; the original length of truncated packets is not kept.

Memory stays small whatever the capture size: every pcap member is copied (streamed) from its
tarball into a scratch directory beside the output, and the files are read packet by packet while
they are merged; the scratch directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import re
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dpkt
from dpkt import pcapng

TS_RE = re.compile(r"-(?P<ts>\d{14})UTC\.tar\.gz$")


_scratch_numbers = itertools.count()


class MergeError(ValueError):
    """A tarball or a capture file in it cannot be read; the message names it."""


@dataclass(frozen=True)
class Source:
    node: str
    tarball: str
    member: str
    linktype: int


def node_of(tarball: Path, capture: str) -> str:
    """``<capture>-<node>-<YYYYMMDDHHMMSS>UTC.tar.gz`` -> node (node names may contain '-')."""
    name = tarball.name
    if not name.startswith(capture + "-") or not TS_RE.search(name):
        raise ValueError(
            f"{name}: not named <capture>-<node>-<YYYYMMDDHHMMSS>UTC.tar.gz for capture {capture!r}"
        )
    return TS_RE.sub("", name)[len(capture) + 1 :]


def _reader(fh: BinaryIO, where: str) -> dpkt.pcap.Reader | pcapng.Reader:
    magic = fh.read(4)
    fh.seek(0)
    try:
        if magic == struct.pack("<I", pcapng.PCAPNG_BT_SHB):
            return pcapng.Reader(fh)
        return dpkt.pcap.Reader(fh)
    except (ValueError, dpkt.Error, struct.error) as exc:
        raise MergeError(f"{where}: not a pcap or pcapng file ({exc})") from None


def _extract_pcaps(tarball: Path, scratch: Path) -> Iterator[tuple[str, Path]]:
    """(member name, extracted file) of every capture file in a tarball, in name (rotation) order.

    Members are streamed to ``scratch`` under numbered names (never the member's own path)."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and ".pcap" in Path(m.name).name),
                key=lambda m: m.name,
            )
            for member in members:
                src = tar.extractfile(member)
                if src is None:
                    continue
                target = scratch / f"{next(_scratch_numbers):06d}.pcap"
                with src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 18)
                yield member.name, target
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise MergeError(f"{tarball.name}: not a readable capture tarball ({exc})") from None


def _tagged(
    reader: dpkt.pcap.Reader | pcapng.Reader,
    index: int,
    where: str,
) -> Iterator[tuple[float, int, bytes]]:
    try:
        for ts, buf in reader:
            yield float(ts), index, bytes(buf)
    except (ValueError, dpkt.Error, struct.error) as exc:
        raise MergeError(f"{where}: damaged capture file ({exc})") from None


def merge(tarballs: list[Path], capture: str, out: Path) -> dict[str, int]:
    """Write ``out`` (pcapng); returns packets per node. Raises ``MergeError`` naming a bad input."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch_dir,
        contextlib.ExitStack() as files,
    ):
        scratch = Path(scratch_dir)
        sources: list[Source] = []
        streams = []
        for tarball in sorted(tarballs):
            try:
                node = node_of(tarball, capture)
            except ValueError as exc:
                raise MergeError(str(exc)) from None
            for member, path in _extract_pcaps(tarball, scratch):
                where = f"{tarball.name}: {member}"
                reader = _reader(files.enter_context(path.open("rb")), where)
                sources.append(Source(node, tarball.name, member, reader.datalink()))
                streams.append(_tagged(reader, len(sources) - 1, where))
        return _write(sources, streams, capture, out)


def _write(
    sources: list[Source], streams: list[Iterator[tuple[float, int, bytes]]], capture: str, out: Path
) -> dict[str, int]:
    # One interface per (node, linktype): rotated files of one node share it.
    iface_of: dict[tuple[str, int], int] = {}
    idbs = []
    for source in sources:
        key = (source.node, source.linktype)
        if key in iface_of:
            continue
        iface_of[key] = len(idbs)
        idbs.append(
            pcapng.InterfaceDescriptionBlockLE(
                linktype=source.linktype,
                snaplen=262144,
                opts=[
                    pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_IF_NAME, data=source.node.encode()),
                    pcapng.PcapngOptionLE(
                        code=pcapng.PCAPNG_OPT_IF_DESCRIPTION,
                        data=f"node {source.node}: {source.tarball}".encode(),
                    ),
                    pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
                ],
            )
        )
    counts = {node: 0 for node in sorted({s.node for s in sources})}
    if not idbs:
        raise MergeError("no capture files (*.pcap*) found in the tarballs")
    shb = pcapng.SectionHeaderBlockLE(
        opts=[
            pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_COMMENT, text=f"retina capture {capture}, merged"),
            pcapng.PcapngOptionLE(
                code=pcapng.PCAPNG_OPT_SHB_USERAPPL, data=b"kubectl-retina capture download --merge"
            ),
            pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
        ]
    )
    partial = out.with_name(out.name + ".part")
    try:
        with partial.open("wb") as fh:
            writer = pcapng.Writer(fh, shb=shb, idb=idbs)
            for ts, index, buf in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
                source = sources[index]
                iface = iface_of[(source.node, source.linktype)]
                epb = pcapng.EnhancedPacketBlockLE(iface_id=iface, pkt_data=buf)
                writer.writepkt(epb, ts=float(ts))
                counts[source.node] += 1
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return counts


@dataclass(frozen=True)
class MergedPacket:
    ts: float
    node: str
    data: bytes


def read_merged(path: Path) -> list[MergedPacket]:
    """Read a merged pcapng back: every packet with its node (for checks and tests)."""
    data = path.read_bytes()
    pos = 0
    names: list[str] = []
    packets = []
    while pos + 8 <= len(data):
        block_type, length = struct.unpack_from("<II", data, pos)
        block = data[pos : pos + length]
        if block_type == pcapng.PCAPNG_BT_IDB:
            idb = pcapng.InterfaceDescriptionBlockLE(block)
            names.append(
                next(bytes(o.data).decode() for o in idb.opts if o.code == pcapng.PCAPNG_OPT_IF_NAME)
            )
        elif block_type == pcapng.PCAPNG_BT_EPB:
            epb = pcapng.EnhancedPacketBlockLE(block)
            ts = ((epb.ts_high << 32) | epb.ts_low) / 1e6
            packets.append(MergedPacket(ts, names[epb.iface_id], bytes(epb.pkt_data)))
        pos += length
    return packets

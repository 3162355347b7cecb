"""Merge per-node capture tarballs into one pcapng: every node's packets in time order.

Each node becomes one pcapng interface (per link type) whose ``if_name`` is the node name and
whose ``if_description`` says which tarball and file the packets came from, so Wireshark shows
the node of every packet (``frame.interface_name``). Packets keep their timestamps (microsecond
resolution) and captured bytes; the original length of truncated packets is not kept.
"""

from __future__ import annotations

import heapq
import io
import re
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt
from dpkt import pcapng

TS_RE = re.compile(r"-(?P<ts>\d{14})UTC\.tar\.gz$")


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
        raise ValueError(f"{name}: not named <capture>-<node>-<YYYYMMDDHHMMSS>UTC.tar.gz "
                         f"for capture {capture!r}")
    return TS_RE.sub("", name)[len(capture) + 1:]


def _reader(data: bytes) -> dpkt.pcap.Reader | pcapng.Reader:
    if data[:4] == struct.pack("<I", pcapng.PCAPNG_BT_SHB):
        return pcapng.Reader(io.BytesIO(data))
    return dpkt.pcap.Reader(io.BytesIO(data))


def _pcaps(tarball: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every capture file in a tarball, in name order (rotation order)."""
    with tarfile.open(tarball, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and ".pcap" in Path(m.name).name),
                         key=lambda m: m.name)
        for member in members:
            fh = tar.extractfile(member)
            if fh is not None:
                yield member.name, fh.read()


def _tagged(reader: dpkt.pcap.Reader | pcapng.Reader, index: int) -> Iterator[tuple[float, int, bytes]]:
    for ts, buf in reader:
        yield float(ts), index, bytes(buf)


def merge(tarballs: list[Path], capture: str, out: Path) -> dict[str, int]:
    """Write ``out`` (pcapng); returns packets per node."""
    sources: list[Source] = []
    streams = []
    for tarball in sorted(tarballs):
        node = node_of(tarball, capture)
        for member, data in _pcaps(tarball):
            reader = _reader(data)
            source = Source(node, tarball.name, member, reader.datalink())
            sources.append(source)
            index = len(sources) - 1
            streams.append(_tagged(reader, index))
    # One interface per (node, linktype): rotated files of one node share it.
    iface_of: dict[tuple[str, int], int] = {}
    idbs = []
    for source in sources:
        key = (source.node, source.linktype)
        if key in iface_of:
            continue
        iface_of[key] = len(idbs)
        idbs.append(pcapng.InterfaceDescriptionBlockLE(linktype=source.linktype, snaplen=262144, opts=[
            pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_IF_NAME, data=source.node.encode()),
            pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_IF_DESCRIPTION,
                                  data=f"node {source.node}: {source.tarball}".encode()),
            pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
        ]))
    counts = {node: 0 for node in sorted({s.node for s in sources})}
    if not idbs:
        raise ValueError("no capture files (*.pcap*) found in the tarballs")
    shb = pcapng.SectionHeaderBlockLE(opts=[
        pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_COMMENT, text=f"retina capture {capture}, merged"),
        pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_SHB_USERAPPL,
                              data=b"kubectl-retina capture download --merge"),
        pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
    ])
    partial = out.with_name(out.name + ".part")
    with partial.open("wb") as fh:
        writer = pcapng.Writer(fh, shb=shb, idb=idbs)
        for ts, index, buf in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            source = sources[index]
            iface = iface_of[(source.node, source.linktype)]
            epb = pcapng.EnhancedPacketBlockLE(iface_id=iface, pkt_data=buf)
            writer.writepkt(epb, ts=float(ts))
            counts[source.node] += 1
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
        block = data[pos:pos + length]
        if block_type == pcapng.PCAPNG_BT_IDB:
            idb = pcapng.InterfaceDescriptionBlockLE(block)
            names.append(next(bytes(o.data).decode() for o in idb.opts
                              if o.code == pcapng.PCAPNG_OPT_IF_NAME))
        elif block_type == pcapng.PCAPNG_BT_EPB:
            epb = pcapng.EnhancedPacketBlockLE(block)
            ts = ((epb.ts_high << 32) | epb.ts_low) / 1e6
            packets.append(MergedPacket(ts, names[epb.iface_id], bytes(epb.pkt_data)))
        pos += length
    return packets

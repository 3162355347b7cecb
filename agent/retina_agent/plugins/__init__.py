"""The agent's plugins, by the name used in ``enabledPlugin``."""

from retina_agent.plugins.base import Plugin
from retina_agent.plugins.dns import Dns
from retina_agent.plugins.dropreason import DropReason
from retina_agent.plugins.latency import Latency
from retina_agent.plugins.linuxutil import LinuxUtil
from retina_agent.plugins.netfilter import Netfilter
from retina_agent.plugins.packetforward import PacketForward
from retina_agent.plugins.packetparser import PacketParser
from retina_agent.plugins.tcpretrans import TcpRetrans

REGISTRY: dict[str, type[Plugin]] = {
    cls.name: cls
    for cls in (LinuxUtil, PacketForward, DropReason, Dns, TcpRetrans, PacketParser, Latency, Netfilter)
}

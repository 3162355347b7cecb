"""One network namespace's ruleset, from every backend that has tables there.

- iptables-legacy: only when the namespace has legacy tables (``/proc/thread-self/net/
  ip_tables_names`` lists them), through ``iptables-legacy-save -c`` / ``ip6tables-legacy-save -c``
- iptables-nft: tables of family ip/ip6 with an iptables name, through ``iptables-nft-save -c``
  (so rules read as iptables users, Calico and kube-router wrote them)
- native nftables: every other table, through libnftables' JSON

Nothing is run per packet: each harvest reads the counters the kernel already keeps. Another
namespace is read from a short-lived thread that ``setns``-es into it, so the agent's own
threads stay in the host namespace; commands started from that thread inherit its namespace.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from retina_agent.netfilter import iptables, nft
from retina_agent.netfilter.model import Table

IPTABLES_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_CLONE_NEWNET = 0x40000000
_TOOL_TIMEOUT = 30.0


@dataclass
class Ruleset:
    tables: list[Table] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what could not be read, and why


def _save(tool: str, family: str, backend: str, ruleset: Ruleset) -> str | None:
    path = shutil.which(tool)
    if path is None:
        ruleset.problems.append(f"{tool} not found (install Debian's iptables)")
        return None
    proc = subprocess.run([path, "-c"], capture_output=True, text=True, timeout=_TOOL_TIMEOUT)
    if proc.returncode != 0:
        ruleset.problems.append(f"{tool} -c failed: {proc.stderr.strip()[:200]}")
        return None
    ruleset.tables += iptables.parse_save(proc.stdout, family, backend)
    return proc.stdout


def _legacy_tables(family: str) -> bool:
    name = "ip_tables_names" if family == "ip" else "ip6_tables_names"
    try:
        return bool(Path("/proc/thread-self/net", name).read_text().strip())
    except OSError:  # module not loaded: no legacy tables in any namespace
        return False


def read_current() -> Ruleset:
    """The ruleset of the calling thread's network namespace."""
    ruleset = Ruleset()
    for family, prefix in (("ip", "iptables"), ("ip6", "ip6tables")):
        if _legacy_tables(family):
            _save(f"{prefix}-legacy-save", family, "iptables-legacy", ruleset)
    try:
        ctx = nft.context()
        tables = nft.list_tables(ctx)
    except (nft.NftUnavailable, OSError) as exc:
        ruleset.problems.append(str(exc))
        ctx, tables = None, None
    native = list(tables or [])
    for family, prefix in (("ip", "iptables"), ("ip6", "ip6tables")):
        xtables = [n for f, n in native if f == family and n in IPTABLES_TABLES]
        if tables is not None and not xtables:
            continue  # no table iptables-nft could own: do not start the tool
        text = _save(f"{prefix}-nft-save", family, "iptables-nft", ruleset)
        if text is None:
            continue
        refused = set(iptables.incompatible(text))
        owned = set(xtables) - refused
        native = [(f, n) for f, n in native if not (f == family and n in owned)]
    if ctx is not None:
        for family, name in native:
            try:
                ruleset.tables.append(nft.read_table(ctx, family, name))
            except OSError as exc:  # removed between the listing and the read
                ruleset.problems.append(str(exc))
    return ruleset


def netns_path(entry: str) -> Path:
    """A configured namespace: a path, or a name under /run/netns (``ip netns`` names)."""
    return Path(entry) if entry.startswith("/") else Path("/run/netns") / entry


def read_netns(path: Path | None) -> Ruleset:
    """The ruleset of the namespace at ``path`` (None: the caller's own)."""
    if path is None:
        return read_current()
    result: list[Ruleset] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(read_current())
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    # The thread ends after the read: a thread that changed namespace is never reused.
    thread = threading.Thread(target=worker, name=f"netfilter-{path.name}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]

"""Shared steps of the plugins that hang off a tracepoint."""

from __future__ import annotations

from retina_agent.bpf.tracefs import TracepointError, TracepointFormat, read_format
from retina_agent.plugins.base import PluginUnavailable, bpf_source


def tracepoint_source(filename: str, tracepoint: str, *fields: str) -> tuple[str, TracepointFormat]:
    """The C file with ``TP_STRUCT`` replaced by the tracepoint's struct from tracefs."""
    try:
        fmt = read_format(tracepoint)
        fmt.require(*fields)
    except TracepointError as exc:
        raise PluginUnavailable(str(exc)) from None
    source = bpf_source(filename).replace("\nTP_STRUCT\n", "\n" + fmt.c_struct("tp_args") + "\n")
    return source, fmt

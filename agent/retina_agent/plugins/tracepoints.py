"""Shared steps of the plugins that hang off a tracepoint."""

from __future__ import annotations

from retina_agent.bpf.tracefs import TP_RECORD_MAX, TracepointError, TracepointFormat, read_format
from retina_agent.plugins.base import PluginUnavailable


def tracepoint_constants(
    tracepoint: str, *fields: str, optional: tuple[str, ...] = ()
) -> tuple[dict[str, int], TracepointFormat]:
    """The constants ``tracepoint.h`` reads this kernel's record with: ``tp_<field>_off`` for
    each of ``fields`` (required) and of ``optional`` that the kernel has, and
    ``tp_record_size``; with the tracepoint's format (its fields and enum tables)."""
    try:
        fmt = read_format(tracepoint)
        fmt.require(*fields)
    except TracepointError as exc:
        raise PluginUnavailable(str(exc)) from None
    present = [fmt.fields[f] for f in (*fields, *optional) if f in fmt.fields]
    for f in present:
        if not f.is_array and f.size in (2, 4, 8) and f.offset % f.size:
            raise PluginUnavailable(
                f"tracepoint {tracepoint}: field {f.name} is not aligned (offset {f.offset})"
            )
    end = max((f.offset + f.size for f in present), default=0)
    if end > TP_RECORD_MAX:
        raise PluginUnavailable(
            f"tracepoint {tracepoint}: its fields end at byte {end}, past the {TP_RECORD_MAX} bytes "
            "the program copies"
        )
    constants = {f"tp_{f.name}_off": f.offset for f in present}
    constants["tp_record_size"] = end
    return constants, fmt

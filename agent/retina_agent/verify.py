"""Every configuration that changes the agent's BPF programs, loaded as the agent loads them.

The BPF objects are compiled ahead; what differs between two agent configurations is their
load-time constants (``const volatile``: datapath.c's ``feat_*`` bits and ``pod_level``,
dropreason's and tcpretrans' ``pod_level``, ``have_reason`` and tracepoint field offsets, BTF
offsets) and map sizes. The verifier prunes the code those constants turn off, so each
configuration is a verification of its own: one kernel can accept every plugin at pod level and
refuse the default install. ``verify`` loads each configuration below through the agent's own
path (the plugins' ``prepare``, the data path's spec as ``datapath.load`` builds it, the loader
child; where the data path is refused, ``datapath.load`` itself with its one-plugin-alone
fallback) and says per plugin: ``loaded``, ``refused`` (the loader's words: libbpf's verifier log
names the instruction and the C line) or ``unavailable`` (the plugin's own check refused before
loading, e.g. a tracepoint without a field it needs). Nothing is attached to TC; tracepoint
programs are attached by the loader and detached again at once.

Configurations whose programs are identical (same objects, constants and map sizes: e.g.
``dataSamplingRate``, a run-time setting) are loaded once and said to be the same as the first.
All configurations load in one loader run: a loader child costs seconds on an emulated kernel.

Run ``python -m retina_agent.verify`` on a node (root) for a JSON report of this kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from retina_agent.bpf import datapath
from retina_agent.bpf.client import load_programs
from retina_agent.bpf.spec import LoadedProgram, LoadError, ProgramSpec
from retina_agent.catalogue import DEFAULT_PLUGINS, PLUGIN_NAMES, PLUGINS
from retina_agent.config import load_config
from retina_agent.plugins import REGISTRY
from retina_agent.plugins.base import Plugin, PluginContext, Prepared, prepare_plugins
from retina_agent.tc import TcManager

LOADED, REFUSED, UNAVAILABLE = "loaded", "refused", "unavailable"
DATAPATH = "datapath"  # the TC data path's object (datapath.c): every TC plugin's feature
#: The latency plugin needs an API server endpoint to time (without a cluster it asks for one);
#: an address of the documentation range: nothing is sent, only the plugin's settings are made.
LATENCY_ENDPOINT = "192.0.2.1:6443"
#: What makes a configuration pod level (packetparser needs it; dns, dropreason and tcpretrans
#: load more code with it).
POD_LEVEL = {"enablePodLevel": True}


def configurations() -> dict[str, dict[str, Any]]:
    """Name -> agent config overrides (dotted keys, as ``load_config`` takes them), for every
    configuration whose constants differ: each eBPF plugin alone (what the agent's fallback
    loads when the combined program is refused) at node and pod level, the default
    ``enabledPlugin`` list (basic) at node and pod level, every plugin at node and pod level,
    every plugin at pod level but packetparser, with ``dataSamplingRate`` above 1, and with
    packetparser's fast flow table off (``fastFlows: 0``)."""
    ebpf = [name for name in PLUGIN_NAMES if PLUGINS[name].ebpf]
    every = list(PLUGIN_NAMES)
    out: dict[str, dict[str, Any]] = {}
    for name in ebpf:
        out[f"{name} alone"] = {"enabledPlugin": [name]}
        out[f"{name} alone, pod level"] = {"enabledPlugin": [name], **POD_LEVEL}
    out["basic"] = {"enabledPlugin": list(DEFAULT_PLUGINS)}
    out["basic, pod level"] = {"enabledPlugin": list(DEFAULT_PLUGINS), **POD_LEVEL}
    out["every plugin"] = {"enabledPlugin": every}
    out["every plugin, pod level"] = {"enabledPlugin": every, **POD_LEVEL}
    out["every plugin but packetparser, pod level"] = {
        "enabledPlugin": [n for n in every if n != "packetparser"],
        **POD_LEVEL,
    }
    out["every plugin, pod level, dataSamplingRate 4"] = {
        "enabledPlugin": every,
        **POD_LEVEL,
        "dataSamplingRate": 4,
    }
    out["every plugin, pod level, fastFlows 0"] = {
        "enabledPlugin": every,
        **POD_LEVEL,
        "plugins.packetparser.fastFlows": 0,
    }
    return out


def _plugins(overrides: dict[str, Any], state_dir: Path) -> dict[str, Plugin]:
    config = load_config(None, {"plugins.latency.apiServer": [LATENCY_ENDPOINT], **overrides})
    pod_level = None
    if config.enable_pod_level:
        from retina_agent.podlevel.cluster import build_pod_level

        pod_level = build_pod_level(config)  # never started: nothing is watched or sent
    ctx = PluginContext(
        config=config,
        tc=TcManager(state_dir, config.data_path_attach),
        state_dir=state_dir,
        pod_level=pod_level,
    )
    return {n: REGISTRY[n](ctx) for n in config.enabled_plugin}


def _load(prepared: Prepared, timeout: float) -> dict[str, LoadedProgram | LoadError]:
    """Load and release at once; per plugin its LoadedProgram (closed) or LoadError."""
    loaded, results = datapath.load(prepared.features, prepared.specs, timeout=timeout)
    if loaded is not None:
        results = {**results, **loaded.plugins}
        loaded.close()
    for result in results.values():
        if isinstance(result, LoadedProgram):
            result.close()
    return results


def _batch(distinct: dict[str, Prepared], timeout: float) -> dict[str, dict[str, LoadedProgram | LoadError]]:
    """Every configuration's objects in ONE loader run (a loader child costs seconds on an
    emulated kernel): the specs the agent would load (the data path's as ``datapath.load``
    builds it), named ``configuration/plugin`` and handing back no program or map (the loader
    loads every program of an object all the same). Configuration -> {plugin or DATAPATH: result}."""
    batch: list[ProgramSpec] = []
    for name, prepared in distinct.items():
        specs = list(prepared.specs)
        if prepared.features:
            specs.append(datapath.spec_for(prepared.features, DATAPATH))  # the agent's own spec
        batch += [replace(s, plugin=f"{name}/{s.plugin}", programs=[], maps=[]) for s in specs]
    out: dict[str, dict[str, LoadedProgram | LoadError]] = {name: {} for name in distinct}
    for key, result in load_programs(batch, timeout=timeout).items():
        if isinstance(result, LoadedProgram):
            result.close()  # tracepoint links: detached at once
        name, plugin = key.rsplit("/", 1)
        out[name][plugin] = result
    return out


def verify(
    configs: dict[str, dict[str, Any]] | None = None, timeout: float = 180.0, log=lambda _: None
) -> dict[str, dict[str, Any]]:
    """Name -> {"config", "fingerprint", "same_as", "plugins": {name: {state, reason}}} for every
    configuration (``configurations()`` when not given); "error" instead of "plugins" for one the
    agent itself refuses (its config or a plugin's ``prepare`` raised).

    Every distinct configuration loads in one loader run; one whose data path object is refused
    is then loaded by ``datapath.load``, as the agent does: each TC plugin alone to find the one
    at fault, then the others together."""
    configs = configurations() if configs is None else configs
    out: dict[str, dict[str, Any]] = {}
    distinct: dict[str, Prepared] = {}
    seen: dict[str, str] = {}  # fingerprint -> the first configuration with it
    with tempfile.TemporaryDirectory(prefix="retina-verify-") as state:
        for name, overrides in configs.items():
            try:
                prepared = prepare_plugins(_plugins(overrides, Path(state)))
            except Exception as exc:  # a configuration the agent itself refuses: said, not raised
                out[name] = {"config": overrides, "error": f"{type(exc).__name__}: {exc}", "plugins": {}}
                log(f"{name}: {out[name]['error']}")
                continue
            fingerprint = prepared.fingerprint()
            first = seen.setdefault(fingerprint, name)
            out[name] = {
                "config": overrides,
                "fingerprint": fingerprint,
                "same_as": None if first == name else first,
            }
            if first == name:
                distinct[name] = prepared
    batch = _batch(distinct, timeout)
    for name, prepared in distinct.items():
        results = batch[name]
        combined = results.pop(DATAPATH, None)
        if isinstance(combined, LoadError):  # the agent's fallback finds the feature at fault
            results |= _load(Prepared(features=prepared.features), timeout)
        elif combined is not None:
            results |= dict.fromkeys((f.plugin for f in prepared.features), combined)
        plugins = {n: {"state": UNAVAILABLE, "reason": r} for n, r in prepared.unavailable.items()}
        for plugin, result in results.items():
            if isinstance(result, LoadError):
                plugins[plugin] = {"state": REFUSED, "reason": str(result)}
            else:
                plugins[plugin] = {"state": LOADED, "reason": prepared.degraded.get(plugin, "")}
        out[name]["plugins"] = dict(sorted(plugins.items()))
    for name, entry in out.items():
        if entry.get("same_as"):
            entry["plugins"] = out[entry["same_as"]]["plugins"]
            log(f"{name}: the same programs as {entry['same_as']}")
        elif "error" not in entry:
            log(f"{name}: " + ", ".join(f"{p} {r['state']}" for p, r in entry["plugins"].items()))
    return out


def refused(report: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Configuration -> {plugin: the verifier's (loader's) words} for every refusal, and the
    configurations the agent could not even prepare (plugin ``*``)."""
    out: dict[str, dict[str, str]] = {}
    for name, entry in report.items():
        bad = {p: r["reason"] for p, r in entry.get("plugins", {}).items() if r["state"] == REFUSED}
        if entry.get("error"):
            bad["*"] = entry["error"]
        if bad:
            out[name] = bad
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retina_agent.verify",
        description="Load every configuration of the agent's BPF programs on this kernel (root) "
        "and print, per configuration and plugin, loaded / refused (the verifier's words) / "
        "unavailable, as JSON. Exit 1 when any is refused.",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per loader run")
    args = parser.parse_args(argv)
    report = verify(timeout=args.timeout, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(report, indent=1))
    return 1 if refused(report) else 0


if __name__ == "__main__":
    sys.exit(main())

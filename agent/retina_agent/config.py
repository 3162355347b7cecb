"""The agent's configuration: Retina's agent config keys, validated, plus per-plugin options.

``load_config(path, overrides)`` reads YAML, applies command-line overrides and returns a
``AgentConfig``; any unknown key or bad value raises ``ConfigError`` naming the key and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PLUGIN_NAMES = ("linuxutil", "packetforward", "dropreason", "dns", "tcpretrans", "packetparser",
                "latency")
DEFAULT_PLUGINS = ["linuxutil", "packetforward", "dropreason", "dns", "tcpretrans"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and what to do."""


def parse_duration(value: Any) -> float:
    """Go-style duration (``10s``, ``1m30s``, ``500ms``) or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s, 1m or 500ms")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if text.startswith("-"):
            raise ValueError(f"{value!r} is negative: use a positive duration like 10s")
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m[1]) * _UNIT_SECONDS[m[2]]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(f"{value!r} is not a duration: use a number with a unit, "
                             "like 10s, 1m or 500ms")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ApiServer(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(10093, ge=1, le=65535)


class InterfacesOption(_Strict):
    interfaces: list[str] = Field(default_factory=lambda: ["auto"])


class PacketForwardOptions(InterfacesOption):
    pass


class DnsOptions(InterfacesOption):
    pass


class DropReasonOptions(_Strict):
    tracepoint: str = "skb:kfree_skb"


class TcpRetransOptions(_Strict):
    tracepoint: str = "tcp:tcp_retransmit_skb"


class PacketParserOptions(_Strict):
    interfaces: list[str] = Field(default_factory=lambda: ["pods"])
    max_flows: int = Field(131072, ge=1024, le=4194304, alias="maxFlows")
    max_ips: int = Field(65536, ge=256, le=1048576, alias="maxIPs")


class LatencyOptions(_Strict):
    interfaces: list[str] = Field(default_factory=lambda: ["auto"])
    api_server: list[str] = Field(default_factory=list, alias="apiServer")  # host:port
    no_response_timeout: str = Field("500ms", alias="noResponseTimeout")

    @field_validator("no_response_timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise ValueError("must be a positive duration like 500ms")
        return value


class PodLevelOptions(_Strict):
    """Ours: how pod-level metrics find the cluster and bound their memory."""

    node_name: str | None = Field(None, alias="nodeName")  # default: $NODE_NAME, else hostname
    kubeconfig: str | None = None  # default: in-cluster, else $KUBECONFIG, else ~/.kube/config
    max_series: int = Field(100000, ge=100, alias="maxSeries")


class LinuxUtilOptions(_Strict):
    procfs: str = "/proc"
    sysfs: str = "/sys"


class PluginOptions(_Strict):
    packetforward: PacketForwardOptions = Field(default_factory=PacketForwardOptions)
    dns: DnsOptions = Field(default_factory=DnsOptions)
    dropreason: DropReasonOptions = Field(default_factory=DropReasonOptions)
    tcpretrans: TcpRetransOptions = Field(default_factory=TcpRetransOptions)
    linuxutil: LinuxUtilOptions = Field(default_factory=LinuxUtilOptions)
    packetparser: PacketParserOptions = Field(default_factory=PacketParserOptions)
    latency: LatencyOptions = Field(default_factory=LatencyOptions)


class AgentConfig(_Strict):
    """Retina's agent config keys (names as in Retina's retina-config ConfigMap)."""

    api_server: ApiServer = Field(default_factory=ApiServer, alias="apiServer")
    log_level: Literal["debug", "info", "warn", "warning", "error", "panic", "fatal"] = Field(
        "info", alias="logLevel")
    enabled_plugin: list[str] = Field(default_factory=lambda: list(DEFAULT_PLUGINS),
                                      alias="enabledPlugin")
    metrics_interval: float = Field(10.0, alias="metricsIntervalDuration")
    enable_telemetry: bool = Field(False, alias="enableTelemetry")
    enable_pod_level: bool = Field(False, alias="enablePodLevel")
    remote_context: bool = Field(False, alias="remoteContext")
    enable_annotations: bool = Field(False, alias="enableAnnotations")
    bypass_lookup_ip_of_interest: bool = Field(False, alias="bypassLookupIPOfInterest")
    data_aggregation_level: Literal["low", "high"] = Field("low", alias="dataAggregationLevel")
    data_sampling_rate: int = Field(1, ge=1, alias="dataSamplingRate")
    enable_conntrack_metrics: bool = Field(False, alias="enableConntrackMetrics")
    state_dir: str = Field("/var/run/retina", alias="stateDir")
    # Ours: how long bcc may take to compile every plugin's program at start (slow small nodes,
    # emulated kernels in the kernel matrix take minutes).
    bpf_compile_timeout: float = Field(180.0, alias="bpfCompileTimeout")
    plugins: PluginOptions = Field(default_factory=PluginOptions)
    pod_level: PodLevelOptions = Field(default_factory=PodLevelOptions, alias="podLevel")

    @field_validator("enabled_plugin")
    @classmethod
    def _known_plugins(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in PLUGIN_NAMES]
        if unknown:
            raise ValueError(f"unknown plugin {', '.join(unknown)}; "
                             f"valid plugins: {', '.join(PLUGIN_NAMES)}")
        return list(dict.fromkeys(names))

    @field_validator("bpf_compile_timeout", mode="before")
    @classmethod
    def _compile_timeout(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if not 10 <= seconds <= 3600:
            raise ValueError("must be between 10s and 1h, like 180s")
        return seconds

    @field_validator("metrics_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < 0.1:
            raise ValueError("must be at least 100ms, like 10s")
        return seconds


def _key_path(loc: tuple) -> str:
    names = {f.alias: f.alias for f in AgentConfig.model_fields.values() if f.alias}
    return ".".join(str(names.get(part, part)) for part in loc)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> AgentConfig:
    """Read ``path`` (YAML, Retina's keys), apply flat dotted ``overrides`` and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, "
                              f"not a {type(loaded).__name__}")
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _key_path(err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling against Retina's agent config)"
            problems.append(f"{key}: {msg}")
        raise ConfigError("invalid agent configuration: " + "; ".join(problems)) from None

"""The agent's configuration: Retina's agent config keys, validated, plus per-plugin options.

``load_config(path, overrides)`` reads YAML, applies command-line overrides and returns a
``AgentConfig``; any unknown key or bad value raises ``ConfigError`` naming the key and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from retina_agent.catalogue import DEFAULT_PLUGINS, PLUGIN_NAMES
from retina_common.durations import bounded_duration

#: bpfLoadTimeout's name from before the BPF programs were compiled ahead (still accepted).
LEGACY_LOAD_TIMEOUT_KEY = "bpfCompileTimeout"

#: Bounds of every duration the agent reads (seconds). The harvest interval: below 100ms the
#: harvest would eat a core, above an hour Prometheus sees stale counters.
METRICS_INTERVAL_BOUNDS = (0.1, 3600.0)
#: The latency plugin's wait for a reply before counting "no response".
NO_RESPONSE_TIMEOUT_BOUNDS = (0.001, 60.0)
#: The HTTP server's read and write timeouts.
HTTP_TIMEOUT_BOUNDS = (0.1, 300.0)


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ApiServer(_Strict):
    """Where and how /metrics is served. The DaemonSet binds the node's IP (``--bind-address
    $(POD_IP)``, ``status.podIP`` under hostNetwork) instead of every address."""

    host: str = Field("0.0.0.0", min_length=1)
    port: int = Field(10093, ge=1, le=65535)
    # Ours: a request must arrive within readTimeout and its response be taken within
    # writeTimeout; past maxConnections the oldest connection without a complete request is
    # closed; workers threads render responses (retina_agent.server).
    read_timeout: float = Field(10.0, alias="readTimeout")
    write_timeout: float = Field(10.0, alias="writeTimeout")
    max_connections: int = Field(256, ge=8, le=4096, alias="maxConnections")
    workers: int = Field(2, ge=1, le=16)

    @field_validator("read_timeout", "write_timeout", mode="before")
    @classmethod
    def _io_timeout(cls, value: Any) -> float:
        low, high = HTTP_TIMEOUT_BOUNDS
        return bounded_duration(value, minimum=low, maximum=high, numbers_are_seconds=True)


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
    # Ours: slots per CPU of the fast flow table (busy flows counted without a hash-map lookup;
    # podlevel/fastflows.py). 144 bytes per slot per CPU; 0 turns it off.
    fast_flows: int = Field(1024, ge=0, le=65536, alias="fastFlows")

    @field_validator("fast_flows")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            lower = 1 << (value.bit_length() - 1)
            raise ValueError(f"must be a power of two (or 0 for off), like {lower} or {lower * 2}")
        return value


class LatencyOptions(_Strict):
    interfaces: list[str] = Field(default_factory=lambda: ["auto"])
    api_server: list[str] = Field(default_factory=list, alias="apiServer")  # host:port
    no_response_timeout: str = Field("500ms", alias="noResponseTimeout")

    @field_validator("no_response_timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        low, high = NO_RESPONSE_TIMEOUT_BOUNDS
        bounded_duration(value, minimum=low, maximum=high)
        return value


class PodLevelOptions(_Strict):
    """Ours: how pod-level metrics find the cluster and bound their memory."""

    node_name: str | None = Field(None, alias="nodeName")  # default: $NODE_NAME, else hostname
    kubeconfig: str | None = None  # default: in-cluster, else $KUBECONFIG, else ~/.kube/config
    max_series: int = Field(100000, ge=100, alias="maxSeries")


class LinuxUtilOptions(_Strict):
    procfs: str = "/proc"
    sysfs: str = "/sys"


class NetfilterOptions(_Strict):
    # "host" (the agent's own namespace), ip-netns names, paths; globs like /run/netns/cni-*
    namespaces: list[str] = Field(default_factory=lambda: ["host"], min_length=1)
    include_zero: bool = Field(False, alias="includeZero")  # also rules that dropped nothing


class PluginOptions(_Strict):
    packetforward: PacketForwardOptions = Field(default_factory=PacketForwardOptions)
    dns: DnsOptions = Field(default_factory=DnsOptions)
    dropreason: DropReasonOptions = Field(default_factory=DropReasonOptions)
    tcpretrans: TcpRetransOptions = Field(default_factory=TcpRetransOptions)
    linuxutil: LinuxUtilOptions = Field(default_factory=LinuxUtilOptions)
    packetparser: PacketParserOptions = Field(default_factory=PacketParserOptions)
    latency: LatencyOptions = Field(default_factory=LatencyOptions)
    netfilter: NetfilterOptions = Field(default_factory=NetfilterOptions)


class AgentConfig(_Strict):
    """Retina's agent config keys (names as in Retina's retina-config ConfigMap)."""

    api_server: ApiServer = Field(default_factory=ApiServer, alias="apiServer")
    log_level: Literal["debug", "info", "warn", "warning", "error", "panic", "fatal"] = Field(
        "info", alias="logLevel"
    )
    enabled_plugin: list[str] = Field(default_factory=lambda: list(DEFAULT_PLUGINS), alias="enabledPlugin")
    metrics_interval: float = Field(10.0, alias="metricsIntervalDuration")
    enable_telemetry: bool = Field(False, alias="enableTelemetry")
    enable_pod_level: bool = Field(False, alias="enablePodLevel")
    remote_context: bool = Field(False, alias="remoteContext")
    enable_annotations: bool = Field(False, alias="enableAnnotations")
    bypass_lookup_ip_of_interest: bool = Field(False, alias="bypassLookupIPOfInterest")
    data_aggregation_level: Literal["low", "high"] = Field("low", alias="dataAggregationLevel")
    data_sampling_rate: int = Field(1, ge=1, le=65535, alias="dataSamplingRate")  # u16 weight
    # Ours (issue 11): percent of one core the BPF programs may use; over it, the agent
    # samples pod-level events more sparsely. How TC programs attach: tcx where the kernel
    # has it (6.6+), else cls_bpf.
    data_path_budget: float | None = Field(None, alias="dataPathBudget")
    data_path_attach: Literal["auto", "tcx", "cls_bpf"] = Field("auto", alias="dataPathAttach")
    enable_conntrack_metrics: bool = Field(False, alias="enableConntrackMetrics")
    state_dir: str = Field("/var/run/retina", alias="stateDir")
    # Ours: how long loading every plugin's BPF object may take at start (emulated kernels in the
    # kernel matrix take minutes). Its old name, from when the agent compiled the programs at
    # start, is still read; a config sets one of the two.
    bpf_load_timeout: float = Field(
        180.0,
        validation_alias=AliasChoices("bpfLoadTimeout", LEGACY_LOAD_TIMEOUT_KEY, "bpf_load_timeout"),
        serialization_alias="bpfLoadTimeout",
    )
    plugins: PluginOptions = Field(default_factory=PluginOptions)
    pod_level: PodLevelOptions = Field(default_factory=PodLevelOptions, alias="podLevel")

    @field_validator("enabled_plugin")
    @classmethod
    def _known_plugins(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in PLUGIN_NAMES]
        if unknown:
            raise ValueError(f"unknown plugin {', '.join(unknown)}; valid plugins: {', '.join(PLUGIN_NAMES)}")
        return list(dict.fromkeys(names))

    @field_validator("data_path_budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> float | None:
        if value is None:
            return None
        text = str(value).strip().removesuffix("%")
        try:
            percent = float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage of one core: use e.g. 2%") from None
        if not 0 < percent <= 100:
            raise ValueError("must be between 0% and 100% of one core, like 2%")
        return percent

    @model_validator(mode="before")
    @classmethod
    def _one_load_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bpfLoadTimeout" in data and LEGACY_LOAD_TIMEOUT_KEY in data:
            raise ValueError(
                f"{LEGACY_LOAD_TIMEOUT_KEY} is the old name of bpfLoadTimeout: set only bpfLoadTimeout"
            )
        return data

    @field_validator("bpf_load_timeout", mode="before")
    @classmethod
    def _load_timeout(cls, value: Any) -> float:
        return bounded_duration(value, minimum=10, maximum=3600)

    @field_validator("metrics_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        """A Go duration (``10s``) or a number of seconds, finite and within the bounds."""
        low, high = METRICS_INTERVAL_BOUNDS
        return bounded_duration(value, minimum=low, maximum=high, numbers_are_seconds=True)


def _key_path(loc: tuple) -> str:
    """Pydantic's error location as the user wrote it: ``apiServer.port``; odd keys (spaces,
    newlines, non-strings) quoted so the message stays one line."""
    return ".".join(
        part if isinstance(part, str) and re.fullmatch(r"[\w-]+", part) else repr(part) for part in loc
    )


#: A config larger than this is not an agent config (a wrong path, /dev/zero...): refused unread.
MAX_CONFIG_BYTES = 1024 * 1024


def _read_config_text(path: Path) -> str:
    """The file's text; a device, FIFO or huge file is refused without reading it whole."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise ConfigError(
            f"config file {path} is not a regular file; give --config the path of the agent config YAML file"
        )
    with path.open("rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is over {MAX_CONFIG_BYTES // 1024} KiB: is it the right "
            "file? give --config the path of the agent config YAML file"
        )
    return data.decode("utf-8")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read ``path`` (YAML, Retina's keys), apply flat dotted ``overrides`` and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        fix = "give --config the path of the agent config YAML file"
        try:
            loaded = yaml.safe_load(_read_config_text(Path(path)))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; {fix}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory; {fix}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}; {fix}") from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"config file {path} is not text (not UTF-8): is it the right file? {fix}"
            ) from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config file {path} is not valid YAML{at}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of keys, not a {type(loaded).__name__}"
            )
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for n, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                key = ".".join(parents[: n + 1])
                raise ConfigError(
                    f"invalid agent configuration: {key}: is {node!r} in the config file "
                    f"but a command-line flag sets {dotted}; make {key} a mapping "
                    f"(like {key}: {{{last}: ...}}) or remove it"
                )
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

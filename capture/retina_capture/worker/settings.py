"""The worker's settings: one contract for the command line, the environment and the Job builder.

Every setting is a command-line flag named like Retina's capture flags, and can also be given
as an environment variable ``RETINA_CAPTURE_<FLAG_IN_UPPER_SNAKE>`` (``--max-size`` ->
``RETINA_CAPTURE_MAX_SIZE``). A flag wins over the environment.

Secrets are never flags (a command line is visible to every user through ``ps``):

=============================  ==========================================  ==================
secret                         environment variable                        Secret key (Jobs)
=============================  ==========================================  ==================
Azure Blob SAS URL             ``RETINA_CAPTURE_BLOB_UPLOAD``              ``blob-upload-url``
                               (or a file named by ``--blob-upload-file``)
S3 access key id               ``RETINA_CAPTURE_S3_ACCESS_KEY_ID``         ``s3-access-key-id``
                               (or ``AWS_ACCESS_KEY_ID``)
S3 secret access key           ``RETINA_CAPTURE_S3_SECRET_ACCESS_KEY``     ``s3-secret-access-key``
                               (or ``AWS_SECRET_ACCESS_KEY``)
=============================  ==========================================  ==================

Public functions:

* ``settings_from_env_and_argv(argv, env) -> CaptureSettings`` (raises ``SettingsError``)
* ``settings_to_env(settings) -> dict[str, str]``: the env for a Job, secrets left out
* ``SECRET_ENV``: which env variables come from which Secret keys
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import PurePosixPath

from retina_capture.filters import FilterError, check_expression, parse_endpoint_list

ENV_PREFIX = "RETINA_CAPTURE_"
DEFAULT_HOST_PATH_BASE = "/var/lib/retina/captures"
DEFAULT_OUTPUT_DIR_TMP = "/tmp/retina-capture"
DEFAULT_S3_PATH = "retina/captures"

#: env variable -> key in the Kubernetes Secret the Job builder references (secretKeyRef).
SECRET_ENV: dict[str, str] = {
    "RETINA_CAPTURE_BLOB_UPLOAD": "blob-upload-url",
    "RETINA_CAPTURE_S3_ACCESS_KEY_ID": "s3-access-key-id",
    "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY": "s3-secret-access-key",
}

#: Flags that would carry a secret: refused on the command line, with the env to use instead.
SECRET_FLAGS: dict[str, str] = {
    "--blob-upload": "RETINA_CAPTURE_BLOB_UPLOAD (or --blob-upload-file PATH)",
    "--s3-access-key-id": "RETINA_CAPTURE_S3_ACCESS_KEY_ID",
    "--s3-secret-access-key": "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY",
}


class SettingsError(ValueError):
    """One or more settings are wrong. ``problems`` lists one message per bad setting."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# -- value parsers ---------------------------------------------------------------------------
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration (``30s``, ``1m``, ``1m30s``, ``1.5h``, ``500ms``) into seconds."""
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m:
            raise ValueError(f"{text!r} is not a duration; write it like 30s, 1m or 1m30s")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError("empty duration; write it like 30s, 1m or 1m30s")
    return sign * total


def format_duration(seconds: float) -> str:
    """Seconds back to a Go duration string (``90.0`` -> ``1m30s``)."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds != int(seconds):
        return f"{int(round(seconds * 1000))}ms"
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec or not (h or m) else "")
    return out


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text!r} is not true or false")


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# -- the settings object ---------------------------------------------------------------------
@dataclass(frozen=True)
class CaptureSettings:
    """Everything one worker run needs. Secrets are hidden from ``repr``."""

    name: str
    node_name: str
    duration: float = 60.0  # seconds
    max_size: int = 100  # MB (1 MB = 1,000,000 bytes, as tcpdump -C counts)
    packet_size: int = 0  # bytes, 0 = whole packets
    file_count: int = 0  # 0 = one file; N = rotate into files of max_size/N MB
    interfaces: tuple[str, ...] = ("any",)
    tcpdump_filter: str = ""
    pcap_filter: str = ""
    include_filter: str = ""
    exclude_filter: str = ""
    pod_ips: tuple[str, ...] = ()
    include_metadata: bool = True
    host_path: str | None = None
    host_path_base: str = DEFAULT_HOST_PATH_BASE
    pvc_mount_path: str | None = None
    blob_upload_file: str | None = None
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_endpoint: str | None = None
    s3_path: str = DEFAULT_S3_PATH
    output_dir_tmp: str = DEFAULT_OUTPUT_DIR_TMP
    upload_attempts: int = 5
    upload_backoff: float = 1.0  # seconds before the 2nd attempt; doubles each time (max 30 s)
    debug: bool = False
    # secrets: from the environment (or a file) only
    blob_upload: str | None = field(default=None, repr=False)
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)

    @property
    def filter_text(self) -> str:
        """The raw expression (``--tcpdump-filter``, or its alias ``--pcap-filter``)."""
        return self.tcpdump_filter or self.pcap_filter

    @property
    def outputs(self) -> list[str]:
        """Names of the requested outputs, in the order they are written."""
        out = []
        if self.host_path is not None:
            out.append("host-path")
        if self.pvc_mount_path is not None:
            out.append("pvc")
        if self.blob_upload is not None:
            out.append("blob")
        if self.s3_bucket is not None:
            out.append("s3")
        return out


# Flag spec: (flag, attribute, kind, help). kind picks the parser; the env name follows the flag.
_FLAGS: list[tuple[str, str, str, str]] = [
    ("--name", "name", "str", "capture name (first part of the tarball name)"),
    ("--node-name", "node_name", "str", "this node's name (default: $NODE_NAME, else the hostname)"),
    ("--duration", "duration", "duration", "how long to capture, Go style: 30s, 1m, 1m30s (default 1m)"),
    ("--max-size", "max_size", "int", "stop when the capture files reach this many MB (default 100)"),
    ("--packet-size", "packet_size", "int", "bytes kept of each packet, 0 = whole packet (default 0)"),
    ("--file-count", "file_count", "int", "rotate into this many files of max-size/N MB (default 0 = one)"),
    ("--interfaces", "interfaces", "list", "comma list of interfaces (default any)"),
    ("--tcpdump-filter", "tcpdump_filter", "str", "raw pcap expression, e.g. 'udp port 53'"),
    ("--pcap-filter", "pcap_filter", "str", "alias of --tcpdump-filter (Retina compatibility)"),
    ("--include-filter", "include_filter", "str", "comma list of IP, IP:port, *:port, IP:* to keep"),
    ("--exclude-filter", "exclude_filter", "str", "comma list of IP, IP:port, *:port, IP:* to drop"),
    ("--pod-ips", "pod_ips", "list", "target pod IPs on this node; captured on their host veths"),
    ("--include-metadata", "include_metadata", "bool", "collect network metadata (default true)"),
    ("--host-path", "host_path", "str", "output: directory relative to --host-path-base"),
    ("--host-path-base", "host_path_base", "str", f"base for --host-path (default {DEFAULT_HOST_PATH_BASE})"),
    ("--pvc-mount-path", "pvc_mount_path", "str", "output: where the Job mounted the PVC"),
    ("--blob-upload-file", "blob_upload_file", "str", "output: file holding an Azure Blob container SAS URL"),
    ("--s3-bucket", "s3_bucket", "str", "output: S3 bucket"),
    ("--s3-region", "s3_region", "str", "S3 region"),
    ("--s3-endpoint", "s3_endpoint", "str", "S3-compatible endpoint URL (default: AWS)"),
    ("--s3-path", "s3_path", "str", f"key prefix in the bucket (default {DEFAULT_S3_PATH})"),
    ("--output-dir-tmp", "output_dir_tmp", "str",
     f"where the tarball is built (default {DEFAULT_OUTPUT_DIR_TMP})"),
    ("--upload-attempts", "upload_attempts", "int", "tries per upload before giving up (default 5)"),
    ("--upload-backoff", "upload_backoff", "duration",
     "wait before the 2nd try, doubled each time (default 1s)"),
    ("--debug", "debug", "bool", "verbose logging"),
]
_ATTR_TO_FLAG = {attr: flag for flag, attr, _, _ in _FLAGS}
_FLAG_KIND = {flag: kind for flag, _, kind, _ in _FLAGS}


def env_name(flag: str) -> str:
    """``--max-size`` -> ``RETINA_CAPTURE_MAX_SIZE``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


KNOWN_ENV = {env_name(flag) for flag, *_ in _FLAGS} | set(SECRET_ENV)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit(2)
        if message.startswith("unrecognized arguments"):
            message += ("; see retina-capture --help (outputs are --host-path, --pvc-mount-path, "
                        "--blob-upload-file, --s3-bucket)")
        raise SettingsError([message])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="retina-capture",
        description="Capture packets on this node, collect network metadata, pack a tarball and "
        "write it to the requested outputs. Every flag can also be set as "
        "RETINA_CAPTURE_<FLAG> in the environment; secrets (blob SAS URL, S3 keys) only there.",
        allow_abbrev=False,
    )
    for flag, attr, kind, help_text in _FLAGS:
        parser.add_argument(flag, dest=attr, default=None, metavar=kind.upper(),
                            help=f"{help_text} [env {env_name(flag)}]")
    for flag in SECRET_FLAGS:
        parser.add_argument(flag, dest="secret_" + flag.lstrip("-").replace("-", "_"),
                            default=None, help=argparse.SUPPRESS)
    return parser


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """Keep ``--duration -1s`` together, so the value is checked (argparse would call it a flag)."""
    takes_value = set(_FLAG_KIND) | set(SECRET_FLAGS)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in takes_value and nxt is not None and nxt.startswith("-") and not nxt.startswith("--"):
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def settings_from_env_and_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> CaptureSettings:
    """Read and check every setting. Raises ``SettingsError`` listing every bad setting."""
    env = dict(os.environ if env is None else env)
    args = build_parser().parse_args(_join_dash_values(list(argv)))
    problems: list[str] = []

    for flag, hint in SECRET_FLAGS.items():
        if getattr(args, "secret_" + flag.lstrip("-").replace("-", "_")) is not None:
            problems.append(f"{flag}: a secret must not be on the command line (ps shows it to "
                            f"every user); set {hint} instead")
    unknown_env = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in KNOWN_ENV)
    for key in unknown_env:
        problems.append(f"{key}: unknown setting; known ones are the flags of retina-capture --help "
                        f"as {ENV_PREFIX}<FLAG>")

    raw: dict[str, str] = {}
    source: dict[str, str] = {}
    for flag, attr, _, _ in _FLAGS:
        value = getattr(args, attr)
        if value is not None:
            raw[attr], source[attr] = value, flag
        elif env_name(flag) in env:
            raw[attr], source[attr] = env[env_name(flag)], f"{flag} (env {env_name(flag)})"

    def where(attr: str) -> str:
        return source.get(attr, _ATTR_TO_FLAG[attr])

    values: dict[str, object] = {}
    defaults = {f.name: f.default for f in fields(CaptureSettings)}
    for _flag, attr, kind, _ in _FLAGS:
        if attr not in raw:
            continue
        text = raw[attr]
        try:
            if kind == "int":
                if not re.fullmatch(r"-?\d+", text.strip()):
                    raise ValueError(f"{text!r} is not a whole number")
                values[attr] = int(text)
            elif kind == "duration":
                values[attr] = parse_duration(text)
            elif kind == "bool":
                values[attr] = parse_bool(text)
            elif kind == "list":
                values[attr] = _split_list(text)
            else:
                values[attr] = text
        except ValueError as exc:
            problems.append(f"{where(attr)}: {exc}")

    # Defaults that depend on the environment.
    if not values.get("name"):
        problems.append("--name: required; give the capture a name (letters, digits, '-', '.')")
        values["name"] = "capture"
    values.setdefault("node_name", env.get("NODE_NAME") or socket.gethostname())

    # Secrets: env (ours, then AWS's), or a file for the SAS URL.
    blob = env.get("RETINA_CAPTURE_BLOB_UPLOAD")
    blob_file = values.get("blob_upload_file")
    if blob_file:
        try:
            with open(str(blob_file), encoding="utf-8") as fh:
                blob = fh.read().strip()
        except OSError as exc:
            problems.append(f"{where('blob_upload_file')}: cannot read {blob_file!r}: {exc.strerror}")
    values["blob_upload"] = blob or None
    values["s3_access_key_id"] = (env.get("RETINA_CAPTURE_S3_ACCESS_KEY_ID")
                                  or env.get("AWS_ACCESS_KEY_ID") or None)
    values["s3_secret_access_key"] = (env.get("RETINA_CAPTURE_S3_SECRET_ACCESS_KEY")
                                      or env.get("AWS_SECRET_ACCESS_KEY") or None)

    problems += _check(values, defaults, where)
    if problems:
        raise SettingsError(problems)
    return CaptureSettings(**values)  # type: ignore[arg-type]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_IFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,14}")


def _check(values: dict[str, object], defaults: dict[str, object], where) -> list[str]:
    """Checks across values. Returns one message per problem, each naming its flag."""
    problems: list[str] = []
    get = lambda attr: values.get(attr, defaults[attr])  # noqa: E731

    for attr in ("name", "node_name"):
        if not _NAME.fullmatch(str(get(attr))):
            problems.append(f"{where(attr)}: {get(attr)!r} may hold only letters, digits, '.', '_' "
                            "and '-' (it becomes part of a file name)")
    if get("duration") <= 0:  # type: ignore[operator]
        problems.append(f"{where('duration')}: must be more than zero, e.g. 30s or 1m "
                        f"(got {format_duration(float(get('duration')))})")  # type: ignore[arg-type]
    if get("max_size") <= 0:  # type: ignore[operator]
        problems.append(f"{where('max_size')}: must be at least 1 (MB)")
    if get("packet_size") < 0:  # type: ignore[operator]
        problems.append(f"{where('packet_size')}: must be 0 (whole packets) or a positive byte count")
    if not 0 <= get("file_count") <= 1000:  # type: ignore[operator]
        problems.append(f"{where('file_count')}: must be 0 (one file) to 1000")
    if get("upload_attempts") < 1:  # type: ignore[operator]
        problems.append(f"{where('upload_attempts')}: must be at least 1")
    if get("upload_backoff") < 0:  # type: ignore[operator]
        problems.append(f"{where('upload_backoff')}: must not be negative")
    interfaces = get("interfaces") or ()
    if not interfaces:
        problems.append(f"{where('interfaces')}: empty; give 'any' or a comma list of interfaces")
    for iface in interfaces:  # type: ignore[union-attr]
        if not _IFACE.fullmatch(iface):
            problems.append(f"{where('interfaces')}: {iface!r} is not an interface name")

    # Filters: raw expressions and endpoint lists.
    for attr in ("tcpdump_filter", "pcap_filter"):
        try:
            values[attr] = check_expression(str(get(attr)), where(attr)) if get(attr) else ""
        except FilterError as exc:
            problems.append(str(exc))
    if get("tcpdump_filter") and get("pcap_filter") and get("tcpdump_filter") != get("pcap_filter"):
        problems.append(f"{where('pcap_filter')}: is an alias of --tcpdump-filter and both differ; "
                        "give only one of them")
    for attr in ("include_filter", "exclude_filter"):
        try:
            parse_endpoint_list(str(get(attr)), where(attr))
        except FilterError as exc:
            problems.append(str(exc))
    for ip in get("pod_ips") or ():  # type: ignore[union-attr]
        try:
            import ipaddress

            ipaddress.ip_address(ip)
        except ValueError:
            problems.append(f"{where('pod_ips')}: {ip!r} is not an IP address")

    # Outputs.
    host_path = get("host_path")
    if host_path is not None:
        problems += _check_relative(str(host_path), where("host_path"))
    if not str(get("host_path_base")).startswith("/"):
        problems.append(f"{where('host_path_base')}: must be an absolute path")
    pvc = get("pvc_mount_path")
    if pvc is not None and (not str(pvc).startswith("/") or ".." in PurePosixPath(str(pvc)).parts):
        problems.append(f"{where('pvc_mount_path')}: must be an absolute path without '..' "
                        "(where the Job mounts the claim)")
    blob = get("blob_upload")
    if blob is not None and not re.match(r"https?://[^/?#]+/[^?#]+\?.+", str(blob)):
        # never echo the value: it is a secret
        problems.append("RETINA_CAPTURE_BLOB_UPLOAD: not a container SAS URL; expected "
                        "https://<account>.blob.core.windows.net/<container>?<sas token>")
    if get("s3_bucket") is not None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", str(get("s3_bucket"))):
            problems.append(f"{where('s3_bucket')}: {get('s3_bucket')!r} is not a valid bucket name "
                            "(3-63 lowercase letters, digits, '.', '-')")
        if not get("s3_access_key_id") or not get("s3_secret_access_key"):
            problems.append("--s3-bucket: needs RETINA_CAPTURE_S3_ACCESS_KEY_ID and "
                            "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY) in the environment")
        problems += _check_relative(str(get("s3_path")), where("s3_path"), allow_empty=True)
    endpoint = get("s3_endpoint")
    if endpoint is not None and not re.match(r"https?://[^/\s]+", str(endpoint)):
        problems.append(f"{where('s3_endpoint')}: {endpoint!r} is not a URL like https://minio.local:9000")
    if not (host_path is not None or pvc is not None or blob is not None or get("s3_bucket") is not None):
        problems.append("no output: give at least one of --host-path, --pvc-mount-path, "
                        "--blob-upload-file (or RETINA_CAPTURE_BLOB_UPLOAD), --s3-bucket")
    if not str(get("output_dir_tmp")).startswith("/"):
        problems.append(f"{where('output_dir_tmp')}: must be an absolute path")
    return problems


def _check_relative(path: str, flag: str, allow_empty: bool = False) -> list[str]:
    if not path.strip():
        return [] if allow_empty else [f"{flag}: empty; give a directory relative to the base"]
    if path.startswith("/"):
        return [f"{flag}: {path!r} is absolute; give a path relative to the base directory"]
    if ".." in PurePosixPath(path).parts:
        return [f"{flag}: {path!r} contains '..'; give a path that stays inside the base directory"]
    if any(c in path for c in "\0\n\r"):
        return [f"{flag}: contains control characters"]
    return []


def settings_to_env(settings: CaptureSettings) -> dict[str, str]:
    """The environment a Job passes to the worker for ``settings``, secrets excluded.

    Secrets go into a Secret and reach the container through ``secretKeyRef`` (see
    ``SECRET_ENV`` for the env name -> Secret key mapping). Unset optional settings are left
    out, so the worker's defaults apply.
    """
    env: dict[str, str] = {}
    for flag, attr, kind, _ in _FLAGS:
        value = getattr(settings, attr)
        if value is None or value == "" or value == ():
            continue
        if kind == "duration":
            text = format_duration(float(value))
        elif kind == "bool":
            text = "true" if value else "false"
        elif kind == "list":
            text = ",".join(value)
        else:
            text = str(value)
        env[env_name(flag)] = text
    return env


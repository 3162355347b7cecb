"""The worker's command line and environment: read ``retina-capture``'s flags and
``RETINA_CAPTURE_*`` variables into a :class:`~retina_capture.model.CaptureSettings`.

Every setting is a flag named like Retina's capture flags, and can also be given as an
environment variable ``RETINA_CAPTURE_<FLAG_IN_UPPER_SNAKE>`` (``--max-size`` ->
``RETINA_CAPTURE_MAX_SIZE``). A flag wins over the environment. What the values may be (types,
bounds, defaults) is decided by the model, the same one that checks a Capture for the CLI and the
operator; this module only reads argv and env, and writes the env a Job passes
(:func:`settings_to_env`).

Secrets are never flags (a command line is visible to every user through ``ps``); where they
come from is described in :mod:`retina_capture.credentials`.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence

from retina_capture.credentials import (
    ENV_BLOB,
    SECRET_ENV,
    blob_url_from_env,
    mask_arguments,
    s3_keys_from_env,
)
from retina_capture.model import (
    DEFAULT_HOST_PATH_BASE,
    DEFAULT_OUTPUT_DIR_TMP,
    DEFAULT_S3_PATH,
    CaptureSettings,
    ModelProblems,
    check,
)
from retina_common.durations import format_go_duration

__all__ = [
    "CaptureSettings",
    "SettingsError",
    "build_parser",
    "env_name",
    "settings_from_env_and_argv",
    "settings_to_env",
]

ENV_PREFIX = "RETINA_CAPTURE_"

#: Flags that would carry a secret: refused on the command line, with the env to use instead.
SECRET_FLAGS: dict[str, str] = {
    "--blob-upload": f"{ENV_BLOB} (or --blob-upload-file PATH)",
    "--s3-access-key-id": "RETINA_CAPTURE_S3_ACCESS_KEY_ID",
    "--s3-secret-access-key": "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY",
}


class SettingsError(ValueError):
    """One or more settings are wrong. ``problems`` lists one message per bad setting."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# Flag spec: (flag, model field, metavar, help). The env name follows the flag.
_FLAGS: list[tuple[str, str, str, str]] = [
    ("--name", "name", "NAME", "capture name (first part of the tarball name)"),
    ("--node-name", "node_name", "NAME", "this node's name (default: $NODE_NAME, else the hostname)"),
    ("--duration", "duration", "DURATION", "how long to capture, Go style: 30s, 1m, 1m30s (default 1m)"),
    ("--max-size", "max_size", "MB", "stop when the capture files reach this many MB (default 100)"),
    ("--packet-size", "packet_size", "BYTES", "bytes kept of each packet, 0 = whole packet (default 0)"),
    ("--file-count", "file_count", "N", "rotate into this many files of max-size/N MB (default 0 = one)"),
    ("--interfaces", "interfaces", "LIST", "comma list of interfaces (default any)"),
    ("--tcpdump-filter", "tcpdump_filter", "EXPR", "raw pcap expression, e.g. 'udp port 53'"),
    ("--pcap-filter", "pcap_filter", "EXPR", "alias of --tcpdump-filter (Retina compatibility)"),
    ("--include-filter", "include_filter", "LIST", "comma list of IP, IP:port, *:port, IP:* to keep"),
    ("--exclude-filter", "exclude_filter", "LIST", "comma list of IP, IP:port, *:port, IP:* to drop"),
    ("--pod-ips", "pod_ips", "LIST", "target pod IPs on this node; captured on their host veths"),
    ("--include-metadata", "include_metadata", "BOOL", "collect network metadata (default true)"),
    ("--host-path", "host_path", "PATH", "output: directory relative to --host-path-base"),
    (
        "--host-path-base",
        "host_path_base",
        "PATH",
        f"base for --host-path (default {DEFAULT_HOST_PATH_BASE})",
    ),
    ("--pvc-mount-path", "pvc_mount_path", "PATH", "output: where the Job mounted the PVC"),
    (
        "--blob-upload-file",
        "blob_upload_file",
        "PATH",
        "output: file holding an Azure Blob container SAS URL",
    ),
    ("--s3-bucket", "s3_bucket", "BUCKET", "output: S3 bucket"),
    ("--s3-region", "s3_region", "REGION", "S3 region"),
    ("--s3-endpoint", "s3_endpoint", "URL", "S3-compatible endpoint URL (default: AWS)"),
    ("--s3-path", "s3_path", "PREFIX", f"key prefix in the bucket (default {DEFAULT_S3_PATH})"),
    (
        "--output-dir-tmp",
        "output_dir_tmp",
        "PATH",
        f"where the tarball is built (default {DEFAULT_OUTPUT_DIR_TMP})",
    ),
    ("--upload-attempts", "upload_attempts", "N", "tries per upload before giving up (default 5)"),
    (
        "--upload-backoff",
        "upload_backoff",
        "DURATION",
        "wait before the 2nd try, doubled each time (default 1s)",
    ),
    ("--debug", "debug", "BOOL", "verbose logging"),
]
_FIELD_TO_FLAG = {attr: flag for flag, attr, _, _ in _FLAGS}
_OUTPUT_FLAGS = "--host-path/--pvc-mount-path/--blob-upload-file/--s3-bucket"


def env_name(flag: str) -> str:
    """``--max-size`` -> ``RETINA_CAPTURE_MAX_SIZE``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


KNOWN_ENV = {env_name(flag) for flag, *_ in _FLAGS} | set(SECRET_ENV)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit(2)
        raise SettingsError([message])

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:  # argparse would echo them whole, secrets included
            raise SettingsError(
                [
                    f"unrecognized arguments: {mask_arguments(unknown)}; see retina-capture "
                    "--help (outputs are --host-path, --pvc-mount-path, --blob-upload-file, "
                    "--s3-bucket)"
                ]
            )
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="retina-capture",
        description="Capture packets on this node, collect network metadata, pack a tarball and "
        "write it to the requested outputs. Every flag can also be set as "
        "RETINA_CAPTURE_<FLAG> in the environment; secrets (blob SAS URL, S3 keys) only there.",
        allow_abbrev=False,
    )
    for flag, attr, metavar, help_text in _FLAGS:
        parser.add_argument(
            flag, dest=attr, default=None, metavar=metavar, help=f"{help_text} [env {env_name(flag)}]"
        )
    for flag in SECRET_FLAGS:
        parser.add_argument(
            flag, dest="secret_" + flag.lstrip("-").replace("-", "_"), default=None, help=argparse.SUPPRESS
        )
    return parser


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """Keep ``--duration -1s`` together, so the value is checked (argparse would call it a flag)."""
    takes_value = set(_FIELD_TO_FLAG.values()) | set(SECRET_FLAGS)
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
            problems.append(
                f"{flag}: a secret must not be on the command line (ps shows it to "
                f"every user); set {hint} instead"
            )
    for key in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in KNOWN_ENV):
        problems.append(
            f"{key}: unknown setting; known ones are the flags of retina-capture --help as {ENV_PREFIX}<FLAG>"
        )

    values: dict[str, object] = {}
    source: dict[str, str] = {}
    for flag, attr, _, _ in _FLAGS:
        value = getattr(args, attr)
        if value is not None:
            values[attr], source[attr] = value, flag
        elif env_name(flag) in env:
            values[attr], source[attr] = env[env_name(flag)], f"{flag} (env {env_name(flag)})"

    def where(attr: str) -> str:
        if attr == "outputs":
            return _OUTPUT_FLAGS
        if attr == "blob_upload":
            return source.get("blob_upload_file", ENV_BLOB)
        return source.get(attr, _FIELD_TO_FLAG.get(attr, attr))

    if not values.get("name"):
        problems.append("--name: required; give the capture a name (lowercase letters, digits, '-')")
        values["name"] = "capture"
    values.setdefault("node_name", env.get("NODE_NAME") or socket.gethostname())

    # Secrets: env (ours, then AWS's), or a file for the SAS URL.
    blob = blob_url_from_env(env)
    if values.get("blob_upload_file"):
        try:
            with open(str(values["blob_upload_file"]), encoding="utf-8") as fh:
                blob = fh.read().strip()
        except (OSError, ValueError) as exc:
            problems.append(
                f"{where('blob_upload_file')}: cannot read {values['blob_upload_file']!r}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            )
    values["blob_upload"] = blob or None
    values["s3_access_key_id"], values["s3_secret_access_key"] = s3_keys_from_env(env)

    try:
        settings = check(CaptureSettings, values, where)
    except ModelProblems as exc:
        problems += [str(p) for p in exc.problems]
    if problems:
        raise SettingsError(problems)
    return settings


def settings_to_env(settings: CaptureSettings) -> dict[str, str]:
    """The environment a Job passes to the worker for ``settings``, secrets excluded.

    Secrets go into a Secret and reach the container through ``secretKeyRef`` (see
    ``credentials.SECRET_ENV``). Unset optional settings are left out, so the worker's defaults apply.
    """
    env: dict[str, str] = {}
    for flag, attr, _, _ in _FLAGS:
        value = getattr(settings, attr)
        default = CaptureSettings.model_fields[attr].default
        if value is None or value == () or (value == "" and default == ""):
            continue  # left out: the worker's default is the same (an empty S3 path is not)
        if attr in ("duration", "upload_backoff"):
            text = format_go_duration(float(value))
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[env_name(flag)] = text
    return env

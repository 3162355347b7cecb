"""What a capture is: every setting, its one validator and its bounds, for the CLI, the operator and
the worker.

Two readers fill these models from what a user wrote, and nothing else checks a value:

* ``spec.py``: a Capture resource (``kubectl retina capture create`` builds one from its flags,
  the operator gets one from the API) -> :class:`CaptureSpec` (this plus targets and Secret names);
* ``worker/settings.py``: ``retina-capture``'s flags and ``RETINA_CAPTURE_*`` environment ->
  :class:`WorkerSettings` (this plus what only the node knows: node name, pod IPs, mount paths,
  secrets).

Both derive from :class:`CaptureOptions`, so a value the CLI accepts is one the worker accepts
(the Job carries it from one to the other). :func:`check` builds a model and turns pydantic's
errors into :class:`Problem` lines, each naming the field as the reader's user wrote it
(``spec.captureConfiguration.captureOption.duration`` or ``--duration (env RETINA_CAPTURE_DURATION)``).

Bounds (one home; the Capture CRD's ``minimum``/``maximum`` are checked against them by a test):
``BOUNDS`` below.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from retina_capture.filters import FilterError, check_expression, parse_endpoint_list
from retina_common.durations import bounded_duration, format_go_duration

DEFAULT_S3_PATH = "retina/captures"
DEFAULT_HOST_PATH_BASE = "/var/lib/retina/captures"
DEFAULT_OUTPUT_DIR_TMP = "/tmp/retina-capture"


@dataclass(frozen=True)
class Bound:
    minimum: float
    maximum: float
    unit: str = ""


#: Every numeric bound of a capture. Durations are in seconds.
BOUNDS: dict[str, Bound] = {
    # A Job gets duration + 15 min (activeDeadlineSeconds); a day covers an overnight capture.
    "duration": Bound(1, 24 * 3600, "s"),
    "max_size": Bound(1, 100_000, "MB"),  # 100 GB: the node keeps the capture and its tarball
    "packet_size": Bound(0, 262_144, "bytes"),  # tcpdump's largest snapshot length
    "file_count": Bound(0, 1000),
    "upload_attempts": Bound(1, 20),
    "upload_backoff": Bound(0, 30, "s"),  # doubled per attempt, capped at 30 s by outputs.retry
}


class SettingProblem(ValueError):
    """Raised by a model check that concerns another field than the one being validated."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Problem:
    """One bad field: ``field`` as the user wrote it (resource path or flag), and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# -- value checkers (each returns the clean value or raises ValueError with a message) --------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)} characters)"


def _whole_number(name: str) -> Callable[[Any], int]:
    bound = BOUNDS[name]

    def check(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]{1,20}\s*", value):
            value = int(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{_show(value)} is not a whole number")
        if not bound.minimum <= value <= bound.maximum:
            unit = f" {bound.unit}" if bound.unit else ""
            raise ValueError(f"must be {int(bound.minimum)} to {int(bound.maximum)}{unit} (got {value})")
        return value

    return check


def _duration(name: str) -> Callable[[Any], float]:
    bound = BOUNDS[name]

    def check(value: Any) -> float:
        return bounded_duration(value, minimum=bound.minimum, maximum=bound.maximum, numbers_are_seconds=True)

    return check


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    }:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    raise ValueError(f"{_show(value)} is not true or false")


def _string_list(value: Any) -> tuple[str, ...]:
    """A list of strings, or a comma list in one string (flags, env) -> tuple, blanks dropped."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a string")
    if any(c in value for c in "\0\n\r"):
        raise ValueError("contains control characters (NUL or a line break)")
    return value


def _pattern(regex: str, what: str) -> Callable[[Any], str]:
    compiled = re.compile(regex)

    def check(value: Any) -> str:
        text = _text(value)
        if not compiled.fullmatch(text):
            raise ValueError(f"{_show(text)} is not {what}")
        return text

    return check


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_IFACE = r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,14}"  # IFNAMSIZ-1 characters; 'any' too


def _capture_name(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(_DNS_LABEL, text) or len(text) > 40:
        raise ValueError(
            f"{_show(text)} must be 1-40 lowercase letters, digits and '-', starting and "
            "ending with a letter or digit (it names the Jobs and the files)"
        )
    return text


def _interfaces(value: Any) -> tuple[str, ...]:
    names = _string_list(value)
    if not names:
        raise ValueError("is empty; give 'any' or a comma list of interfaces")
    for name in names:
        if not re.fullmatch(_IFACE, name):
            raise ValueError(f"{_show(name)} is not an interface name")
    return names


def relative_path(value: Any, *, allow_empty: bool = False) -> str:
    """A directory below a base the node chooses: no leading '/', no '..'."""
    text = _text(value)
    if not text.strip():
        if allow_empty:
            return text
        raise ValueError("is empty; give a directory relative to the capture directory")
    if text.startswith("/"):
        raise ValueError(
            f"{_show(text)} is absolute; give a path relative to the node's capture "
            f"directory {DEFAULT_HOST_PATH_BASE}"
        )
    if ".." in PurePosixPath(text).parts:
        raise ValueError(f"{_show(text)} contains '..'; give a path that stays inside the capture directory")
    return text


def _absolute_path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or ".." in PurePosixPath(text).parts:
        raise ValueError(f"{_show(text)} must be an absolute path without '..'")
    return text


def _pcap_expression(value: Any) -> str:
    try:
        return check_expression(_text(value), "")
    except FilterError as exc:
        raise ValueError(str(exc).split(": ", 1)[1]) from None


def _endpoints(value: Any) -> tuple[str, ...]:
    items = _string_list(value)
    try:
        parse_endpoint_list(",".join(items), "")
    except FilterError as exc:
        raise ValueError(str(exc).split(": ", 1)[1]) from None
    return items


def _s3_endpoint(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", text):
        raise ValueError(f"{_show(text)} is not a URL like https://minio.local:9000")
    return text


def _ip_list(value: Any) -> tuple[str, ...]:
    items = _string_list(value)
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{_show(item)} is not an IP address") from None
    return items


def _v(check: Callable[[Any], Any]) -> BeforeValidator:
    return BeforeValidator(check)


Name = Annotated[str, _v(_capture_name)]
Duration = Annotated[float, _v(_duration("duration"))]
Backoff = Annotated[float, _v(_duration("upload_backoff"))]
MaxSize = Annotated[int, _v(_whole_number("max_size"))]
PacketSize = Annotated[int, _v(_whole_number("packet_size"))]
FileCount = Annotated[int, _v(_whole_number("file_count"))]
Attempts = Annotated[int, _v(_whole_number("upload_attempts"))]
Interfaces = Annotated[tuple[str, ...], _v(_interfaces)]
PcapExpression = Annotated[str, _v(_pcap_expression)]
Endpoints = Annotated[tuple[str, ...], _v(_endpoints)]
Flag = Annotated[bool, _v(_bool)]
RelativePath = Annotated[str, _v(relative_path)]
S3Path = Annotated[str, _v(lambda v: relative_path(v, allow_empty=True))]
AbsolutePath = Annotated[str, _v(_absolute_path)]
Bucket = Annotated[
    str,
    _v(
        _pattern(
            r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "a bucket name (3-63 lowercase letters, digits, '.', '-')"
        )
    ),
]
S3Endpoint = Annotated[str, _v(_s3_endpoint)]
Region = Annotated[str, _v(_pattern(r"[a-z0-9-]{1,32}", "a region name like eu-west-1"))]


def _names(what: str) -> Callable[[Any], tuple[str, ...]]:
    """A list (or comma list) of Kubernetes object names (DNS subdomains)."""

    def check(value: Any) -> tuple[str, ...]:
        names = _string_list(value)
        for name in names:
            if not re.fullmatch(_DNS_SUBDOMAIN, name):
                raise ValueError(f"{_show(name)} is not {what}")
        return names

    return check


DnsLabel = Annotated[str, _v(_pattern(_DNS_LABEL, "a name (lowercase letters, digits, '-')"))]
DnsSubdomain = Annotated[str, _v(_pattern(_DNS_SUBDOMAIN, "a name (lowercase letters, digits, '-', '.')"))]
IpList = Annotated[tuple[str, ...], _v(_ip_list)]
Text = Annotated[str, _v(_text)]
NodeNames = Annotated[tuple[str, ...], _v(_names("a node name"))]
PodNames = Annotated[tuple[str, ...], _v(_names("a pod name"))]


class CaptureOptions(BaseModel):
    """What to capture and where to write it: the settings the CLI, the operator and the worker share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    duration: Duration = 60.0  # seconds
    max_size: MaxSize = 100  # MB (1 MB = 1,000,000 bytes, as tcpdump -C counts)
    packet_size: PacketSize = 0  # bytes kept of each packet, 0 = whole packets
    file_count: FileCount = 0  # 0 = one file; N = rotate into N files of max_size/N MB
    interfaces: Interfaces = ("any",)
    tcpdump_filter: PcapExpression = ""
    pcap_filter: PcapExpression = ""  # Retina's alias of tcpdump_filter
    include_filter: Endpoints = ()
    exclude_filter: Endpoints = ()
    include_metadata: Flag = True
    host_path: RelativePath | None = None
    s3_bucket: Bucket | None = None
    s3_region: Region | None = None
    s3_endpoint: S3Endpoint | None = None
    s3_path: S3Path = DEFAULT_S3_PATH

    @classmethod
    def presence_problems(cls, given: set[str]) -> list[tuple[str, str]]:
        """Rules on which fields are given, as (field, message); ``check`` also runs them when
        values failed, so one answer lists a missing output next to a bad duration."""
        return []

    @model_validator(mode="after")
    def _presence(self) -> CaptureOptions:
        problems = type(self).presence_problems(
            {f for f in type(self).model_fields if given(getattr(self, f, None))}
        )
        if problems:
            raise SettingProblem(*problems[0])
        return self

    @model_validator(mode="after")
    def _consistent(self) -> CaptureOptions:
        if self.tcpdump_filter and self.pcap_filter and self.tcpdump_filter != self.pcap_filter:
            raise SettingProblem(
                "pcap_filter", "is an alias of the tcpdump filter and both differ; give only one of them"
            )
        if self.file_count > self.max_size:
            raise SettingProblem(
                "file_count",
                f"{self.file_count} files of a {self.max_size} MB capture "
                "would be under 1 MB each (tcpdump rotates by whole MB); "
                f"give at most {self.max_size} or a larger maximum size",
            )
        return self

    @property
    def filter_text(self) -> str:
        """The raw expression (the tcpdump filter, or its alias the pcap filter)."""
        return self.tcpdump_filter or self.pcap_filter

    @property
    def duration_text(self) -> str:
        return format_go_duration(self.duration)


CO = TypeVar("CO", bound="CaptureOptions")


class ModelProblems(ValueError):
    """A model that could not be built; ``problems`` names every bad field as the reader wrote it."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def given(value: Any) -> bool:
    """Was a field given a value (not left out, not empty)?"""
    return value is not None and value not in ("", (), [], {})


def _message(error: Mapping[str, Any]) -> str:
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, BaseException):
        return str(cause)
    if error["type"] == "extra_forbidden":
        return "unknown setting"
    if error["type"] == "missing":
        return "required"
    return str(error["msg"])


def check(model: type[CO], values: Mapping[str, Any], where: Callable[[str], str]) -> CO:
    """``model(**values)``, or :class:`ModelProblems` with one problem per bad field.

    ``where(field)`` names a model field (or a group a model check names, e.g. ``targets``) as
    the user wrote it.
    """
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            cause = (error.get("ctx") or {}).get("error")
            field = (
                cause.field
                if isinstance(cause, SettingProblem)
                else (str(error["loc"][0]) if error["loc"] else "")
            )
            problem = Problem(where(field), _message(error))
            if problem not in problems:
                problems.append(problem)
        # The presence rules run after the values are valid; say what they would say too.
        for field, message in model.presence_problems({f for f, v in values.items() if given(v)}):
            problem = Problem(where(field), message)
            if problem not in problems:
                problems.append(problem)
        raise ModelProblems(problems) from None


def secret_field(**kwargs: Any) -> Any:
    """A field that holds a secret: kept out of ``repr`` (and so out of logs)."""
    return Field(repr=False, **kwargs)


_NODE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}"  # a hostname may carry capitals; it names files
_SAS_URL = re.compile(r"https?://[^/?#\s]+/[^?#\s]+\?\S+")


def check_sas_url(url: Any) -> None:
    """Refuse what is not an Azure Blob container SAS URL, without echoing it (it is a secret)."""
    if not isinstance(url, str) or not _SAS_URL.fullmatch(url):
        raise ValueError(
            "not a container SAS URL; expected "
            "https://<account>.blob.core.windows.net/<container>?<sas token>"
        )


def _sas_url(value: Any) -> str | None:
    if value is not None:
        check_sas_url(value)
    return value


class CaptureSettings(CaptureOptions):
    """One worker run on one node: the shared options plus what only the node knows.

    Secrets (the blob SAS URL, the S3 keys) come from the environment or a file, never a flag,
    and are kept out of ``repr``.
    """

    node_name: Annotated[str, _v(_pattern(_NODE_NAME, "a node name (letters, digits, '.', '_', '-')"))]
    pod_ips: IpList = ()
    host_path_base: AbsolutePath = DEFAULT_HOST_PATH_BASE
    pvc_mount_path: AbsolutePath | None = None
    blob_upload_file: Text | None = None
    output_dir_tmp: AbsolutePath = DEFAULT_OUTPUT_DIR_TMP
    upload_attempts: Attempts = 5
    upload_backoff: Backoff = 1.0  # seconds before the 2nd attempt; doubles each time (max 30 s)
    debug: Flag = False
    blob_upload: Annotated[str | None, _v(_sas_url)] = secret_field(default=None)
    s3_access_key_id: str | None = secret_field(default=None)
    s3_secret_access_key: str | None = secret_field(default=None)

    @classmethod
    def presence_problems(cls, given: set[str]) -> list[tuple[str, str]]:
        problems = super().presence_problems(given)
        keys = {"s3_access_key_id", "s3_secret_access_key"}
        if "s3_bucket" in given and not keys <= given:
            problems.append(
                (
                    "s3_bucket",
                    "needs RETINA_CAPTURE_S3_ACCESS_KEY_ID and "
                    "RETINA_CAPTURE_S3_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY) in the environment",
                )
            )
        if not given & {"host_path", "pvc_mount_path", "blob_upload", "s3_bucket"}:
            problems.append(
                (
                    "outputs",
                    "no output; give at least one of them (the SAS URL may also come "
                    "from RETINA_CAPTURE_BLOB_UPLOAD)",
                )
            )
        return problems

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

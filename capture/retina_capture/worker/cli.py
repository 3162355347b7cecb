"""``retina-capture``: capture on this node, add metadata, pack, write to every output.

Exit codes: 0 all outputs written; 1 capture or an output failed (the message says where the
tarball was kept; a capture that tcpdump ended early is still packed and written, with a note);
2 bad settings (nothing was started, no file was written). In a container, the last error is
also the container's termination message (``/dev/termination-log``, which the kubelet made).
SIGINT/SIGTERM end the capture early; the packets so far are still packed and written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from retina_capture.credentials import ALL_SECRET_ENV
from retina_capture.filters import FilterError, build_expression, parse_endpoint_list
from retina_capture.outputs import OutputError, build_outputs, write_all
from retina_capture.worker.capture import CaptureError, run_capture, validate_expression
from retina_capture.worker.metadata import collect_metadata
from retina_capture.worker.pack import capture_stem, pack
from retina_capture.worker.podnet import plan_interfaces
from retina_capture.worker.settings import (
    ENV_PREFIX,
    CaptureSettings,
    SettingsError,
    build_parser,
    settings_from_env_and_argv,
)

log = logging.getLogger("retina_capture")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _fail_usage(problems: Sequence[str]) -> int:
    for problem in problems:
        print(f"retina-capture: error: {problem}", file=sys.stderr)
    print("retina-capture: nothing was captured; see retina-capture --help", file=sys.stderr)
    return EXIT_USAGE


def _scrub_secrets_from_environ() -> None:
    """Secrets are read once; children (tcpdump, ip, ss) must not inherit them."""
    for key in ALL_SECRET_ENV:
        os.environ.pop(key, None)


def _child_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k in {"PATH", "LANG", "LC_ALL", "TZ"} and not k.startswith(ENV_PREFIX)
    }


TERMINATION_LOG = Path("/dev/termination-log")


def _error(message: str) -> None:
    """An error line on stderr; in a pod also the termination message (if the kubelet made the
    file: never created here, so running outside a container writes nothing to /dev)."""
    print(f"retina-capture: error: {message}", file=sys.stderr)
    if TERMINATION_LOG.is_file():
        with contextlib.suppress(OSError), TERMINATION_LOG.open("a") as fh:
            fh.write(message + "\n")


def prepare(settings: CaptureSettings):
    """Everything that can fail before capturing: interfaces, filter, outputs."""
    plan = plan_interfaces(settings.interfaces, settings.pod_ips)
    expr = build_expression(
        settings.filter_text,
        parse_endpoint_list(",".join(settings.include_filter), "--include-filter"),
        parse_endpoint_list(",".join(settings.exclude_filter), "--exclude-filter"),
        hosts=plan.hosts,
    )
    flag = "--pcap-filter" if settings.pcap_filter and not settings.tcpdump_filter else "--tcpdump-filter"
    for iface in plan.interfaces:
        validate_expression(expr, iface, flag)
    outputs = build_outputs(settings)
    for out in outputs:
        out.check()
    return plan, expr, outputs


def run(settings: CaptureSettings, stop: threading.Event | None = None) -> int:
    try:
        plan, expr, outputs = prepare(settings)
    except (FilterError, OutputError) as exc:
        return _fail_usage([str(exc)])
    except CaptureError as exc:  # no tcpdump, or it may not capture here: not the user's input
        print(f"retina-capture: error: {exc}", file=sys.stderr)
        print("retina-capture: nothing was captured", file=sys.stderr)
        return EXIT_FAILED

    started = datetime.now(UTC)
    stem = capture_stem(settings.name, settings.node_name, started)
    tmp_root = Path(settings.output_dir_tmp)
    workdir = tmp_root / stem
    workdir.mkdir(parents=True, exist_ok=True)
    tarball = tmp_root / f"{stem}.tar.gz"
    log.info(
        "capture %s on node %s: outputs %s",
        settings.name,
        settings.node_name,
        ", ".join(f"{o.name}={o.describe()}" for o in outputs),
    )
    try:
        result = run_capture(
            interfaces=plan.interfaces,
            expr=expr,
            workdir=workdir,
            stem=stem,
            duration=settings.duration,
            max_size_mb=settings.max_size,
            packet_size=settings.packet_size,
            file_count=settings.file_count,
            stop=stop,
            env=_child_env(),
        )
        if settings.include_metadata:
            collect_metadata(workdir)
        pack(workdir, tarball)
    except (CaptureError, OSError) as exc:
        _error(f"capture failed: {exc}; partial files are on node {settings.node_name} in {workdir}")
        return EXIT_FAILED
    shutil.rmtree(workdir, ignore_errors=True)
    log.info("packed %s (%d bytes)", tarball, tarball.stat().st_size)

    report = write_all(outputs, tarball, attempts=settings.upload_attempts, backoff=settings.upload_backoff)
    if report.failed:
        copies = "".join(
            f", and a copy is at {where}"
            for name, where in report.written.items()
            if name in {"host-path", "pvc"}
        )
        for name, message in report.failed.items():
            _error(f"{name} output failed: {message}")
        _error(f"the capture was kept on this node at {tarball}{copies} (node {settings.node_name})")
        return EXIT_FAILED
    tarball.unlink(missing_ok=True)
    if result.problem is not None:
        _error(
            f"the capture is incomplete: {result.problem}; what was captured is in {tarball.name}, "
            "written to " + ", ".join(report.written.values())
        )
        return EXIT_FAILED
    print(f"retina-capture: {tarball.name} written to " + ", ".join(report.written.values()), file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return EXIT_OK
    try:
        settings = settings_from_env_and_argv(argv, os.environ)
    except SettingsError as exc:
        return _fail_usage(exc.problems)
    _scrub_secrets_from_environ()
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return run(settings, stop)


if __name__ == "__main__":
    sys.exit(main())

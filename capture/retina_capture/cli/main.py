"""``kubectl-retina``: the kubectl plugin (``kubectl retina capture create|list|delete|download``).

Flags and defaults follow Retina's ``kubectl retina capture``. ``create`` builds the same
Capture resource the operator reads (``spec.capture_from_flags``-style, below), checks it with
``spec.parse_capture``, resolves the nodes and creates one Job per node (``jobs.build_jobs``) and,
for blob or S3 outputs, a Secret with the credentials.

Secrets: Retina takes the SAS URL and the S3 keys as flags; so do we, for compatibility, but a
flag is visible to every local user through ``ps``. Prefer the environment:
``RETINA_CAPTURE_BLOB_UPLOAD``, ``RETINA_CAPTURE_S3_ACCESS_KEY_ID`` and
``RETINA_CAPTURE_S3_SECRET_ACCESS_KEY`` (or ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``).
Secrets are written only into the Secret, never printed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from retina_capture import jobs as jobs_mod
from retina_capture import kube, spec
from retina_capture.cli import diagnose as diagnose_mod
from retina_capture.cli import download as download_mod
from retina_capture.cli import map as map_mod
from retina_capture.cli import merge as merge_mod
from retina_capture.cli import observe as observe_mod
from retina_capture.credentials import ENV_BLOB, ENV_S3_ID, ENV_S3_SECRET, mask_arguments, s3_keys_from_env
from retina_capture.model import check_sas_url
from retina_common.durations import bounded_duration

VERSION = "0.1.0"
OBSERVE_COMMANDS = {"diagnose": diagnose_mod, "map": map_mod}
DEFAULT_NAME = "retina-capture"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits; we want one clean message and code 2
        # "argument --max-size: invalid int value: 'x'" -> "--max-size: invalid int value: 'x'",
        # the form every other problem takes
        raise UsageError(re.sub(r"^argument (?:-\w/)?(--[\w-]+): ", r"\1: ", message))

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:  # argparse would echo them whole, secrets included
            raise UsageError(f"unrecognized arguments: {mask_arguments(unknown)}")
        return parsed


def _kube_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="path to the kubeconfig file (default $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument("--context", help="the kubeconfig context to use")
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's namespace)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kubectl retina", description="Retina-compatible network capture for Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("version", help="print the plugin version")
    capture = sub.add_parser("capture", help="distributed packet capture")
    csub = capture.add_subparsers(dest="action", required=True, parser_class=_Parser)

    create = csub.add_parser("create", help="capture packets on the selected nodes or pods")
    _kube_flags(create)
    a = create.add_argument
    a("--name", default=DEFAULT_NAME, help=f"capture name (default {DEFAULT_NAME})")
    a("--duration", default="1m", help="how long to capture, e.g. 30s, 1m (default 1m)")
    a("--max-size", type=int, default=spec.DEFAULT_MAX_SIZE, help="stop at this many MB (default 100)")
    a("--packet-size", type=int, default=0, help="bytes kept per packet, 0 = all (default 0)")
    a("--file-count", type=int, default=0, help="rotate into this many files (default 0 = one)")
    a("--interfaces", default="any", help="comma list of interfaces (default any)")
    a("--node-names", default="", help="comma list of node names")
    a(
        "--node-selectors",
        default=None,
        help=f"node labels key=value,... (default {spec.DEFAULT_NODE_SELECTOR} when nothing else selects)",
    )
    a("--pod-names", default="", help="comma list of pod names in --namespace")
    a("--pod-selectors", default="", help="pod labels key=value,...")
    a("--namespace-selectors", default="", help="namespace labels key=value,... (with --pod-selectors)")
    a("--host-path", default=None, help="output: directory on the node, relative to /var/lib/retina/captures")
    a("--pvc", default=None, help="output: PersistentVolumeClaim name")
    a(
        "--blob-upload",
        default=None,
        help="output: Azure Blob container SAS URL (better: $RETINA_CAPTURE_BLOB_UPLOAD)",
    )
    a("--s3-bucket", default=None, help="output: S3 bucket")
    a("--s3-region", default=None, help="S3 region")
    a("--s3-endpoint", default=None, help="S3-compatible endpoint URL")
    a("--s3-path", default=spec.DEFAULT_S3_PATH, help=f"key prefix (default {spec.DEFAULT_S3_PATH})")
    a("--s3-access-key-id", default=None, help="S3 key id (better: $RETINA_CAPTURE_S3_ACCESS_KEY_ID)")
    a(
        "--s3-secret-access-key",
        default=None,
        help="S3 secret key (better: $RETINA_CAPTURE_S3_SECRET_ACCESS_KEY)",
    )
    a("--pcap-filter", default="", help="raw pcap expression (alias of --tcpdump-filter)")
    a("--tcpdump-filter", default="", help="raw tcpdump expression, e.g. 'udp port 53'")
    a("--include-filter", default="", help="comma list of IP, IP:port, *:port, IP:* to keep")
    a("--exclude-filter", default="", help="comma list of IP, IP:port, *:port, IP:* to drop")
    a("--include-metadata", default="true", help="collect network metadata (default true)")
    a("--job-num-limit", type=int, default=0, help="refuse if more Jobs would be created (0 = no limit)")
    a(
        "--image",
        default=os.environ.get("RETINA_CAPTURE_IMAGE", jobs_mod.DEFAULT_IMAGE),
        help=f"worker image (default $RETINA_CAPTURE_IMAGE or {jobs_mod.DEFAULT_IMAGE})",
    )
    a("--no-wait", action="store_true", help="return once the Jobs are created")
    a(
        "--cleanup-after-upload",
        action="store_true",
        help="once every node has uploaded (all Jobs succeeded), delete the Jobs and the Secret; "
        "the tarballs stay in the output (needs waiting: not with --no-wait)",
    )
    a("--wait-timeout", default=None, help="how long to wait (default: duration + 15m)")
    a("--poll-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    a("--debug", action="store_true", help="print the Jobs that are created")

    lst = csub.add_parser("list", help="list captures")
    _kube_flags(lst)
    lst.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace")

    delete = csub.add_parser("delete", help="delete a capture's Jobs and Secret")
    _kube_flags(delete)
    delete.add_argument("--name", required=True, help="capture name")

    dl = csub.add_parser("download", help="download a capture's tarballs")
    _kube_flags(dl)
    dl.add_argument("--name", default=None, help="capture name")
    dl.add_argument("--all", action="store_true", help="download every capture in --namespace")
    dl.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="download every capture in every namespace (into <output>/<namespace>/)",
    )
    dl.add_argument("-o", "--output", default=".", help="directory to write to (default .)")
    dl.add_argument(
        "--merge",
        action="store_true",
        help="also write <name>-merged.pcapng: every node's packets in time order",
    )
    dl.add_argument("--pod-start-timeout", type=float, default=180.0, help=argparse.SUPPRESS)
    dl.add_argument(
        "--from-dir",
        default=None,
        help="do not download: merge the tarballs already in this directory (e.g. copied from host paths)",
    )
    for module in OBSERVE_COMMANDS.values():  # diagnose, map: read metrics from Prometheus
        module.register(sub)
    return parser


# -- create ----------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def capture_from_flags(args: argparse.Namespace, namespace: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Flags -> (Capture resource, secret values). The resource is what the operator would get."""
    problems: list[spec.Problem] = []
    target: dict[str, Any] = {}
    if _csv(args.node_names):
        target["nodeNames"] = _csv(args.node_names)
    if args.pod_names:
        target["podNames"] = _csv(args.pod_names)
    for flag_value, key, field in (
        (args.node_selectors, "nodeSelector", "nodeSelector"),
        (args.pod_selectors, "podSelector", "podSelector"),
        (args.namespace_selectors, "namespaceSelector", "namespaceSelector"),
    ):
        if flag_value:
            try:
                target[key] = spec.parse_selector_flag(flag_value, f"{spec._TGT}.{field}")
            except spec.SpecError as exc:
                problems += exc.problems
    if not target:  # Retina's default: every Linux node
        target["nodeSelector"] = spec.parse_selector_flag(
            spec.DEFAULT_NODE_SELECTOR, f"{spec._TGT}.nodeSelector"
        )
    include_metadata: Any = args.include_metadata
    if str(include_metadata).lower() in ("true", "false"):
        include_metadata = str(include_metadata).lower() == "true"

    option: dict[str, Any] = {
        "duration": args.duration,
        "maxCaptureSize": args.max_size,
        "packetSize": args.packet_size,
        "interfaces": _csv(args.interfaces) or ["any"],
    }
    if args.file_count:
        option["fileCount"] = args.file_count
    if args.pcap_filter:
        option["pcapFilter"] = args.pcap_filter
    config: dict[str, Any] = {
        "captureTarget": target,
        "captureOption": option,
        "includeMetadata": include_metadata,
    }
    if args.tcpdump_filter:
        config["tcpdumpFilter"] = args.tcpdump_filter
    filters = {
        k: _csv(v) for k, v in (("include", args.include_filter), ("exclude", args.exclude_filter)) if v
    }
    if filters:
        config["filters"] = filters

    secrets: dict[str, str] = {}
    output: dict[str, Any] = {}
    if args.host_path is not None:
        output["hostPath"] = args.host_path
    if args.pvc is not None:
        output["persistentVolumeClaim"] = args.pvc
    blob = args.blob_upload or os.environ.get(ENV_BLOB)
    if blob:
        try:
            check_sas_url(blob)  # the worker would refuse it on the node
        except ValueError as exc:
            problems.append(
                spec.Problem(f"{spec._OUT}.blobUpload", f"{exc} (from --blob-upload or ${ENV_BLOB})")
            )
        secrets["blob_upload_url"] = blob
        output["blobUpload"] = jobs_mod.secret_name(args.name)
    if args.s3_bucket is not None:
        env_id, env_secret = s3_keys_from_env(os.environ)
        key_id, secret_key = args.s3_access_key_id or env_id, args.s3_secret_access_key or env_secret
        if not key_id or not secret_key:
            problems.append(
                spec.Problem(
                    f"{spec._OUT}.s3Upload.secretName",
                    f"needs S3 keys: set {ENV_S3_ID} and {ENV_S3_SECRET} (or AWS_*)",
                )
            )
        else:
            secrets["s3_access_key_id"], secrets["s3_secret_access_key"] = key_id, secret_key
        output["s3Upload"] = {
            k: v
            for k, v in {
                "bucket": args.s3_bucket,
                "region": args.s3_region,
                "endpoint": args.s3_endpoint,
                "path": args.s3_path,
                "secretName": jobs_mod.secret_name(args.name),
            }.items()
            if v is not None
        }
    body = spec.capture_resource(
        args.name, namespace, {"captureConfiguration": config, "outputConfiguration": output}
    )
    if problems:  # report the rest of the flags too
        try:
            spec.parse_capture(body)
        except spec.SpecError as exc:
            problems += [p for p in exc.problems if p not in problems]
        raise spec.SpecError(problems)
    return body, secrets


def _warn_secret_flags(args: argparse.Namespace) -> None:
    for flag, value, env in (
        ("--blob-upload", args.blob_upload, ENV_BLOB),
        ("--s3-access-key-id", args.s3_access_key_id, ENV_S3_ID),
        ("--s3-secret-access-key", args.s3_secret_access_key, ENV_S3_SECRET),
    ):
        if value:
            print(
                f"warning: {flag} puts a secret on the command line, where other local users can see "
                f"it; set {env} in the environment instead",
                file=sys.stderr,
            )


@dataclass(frozen=True)
class CreatePlan:
    """What ``create`` will do, checked from the flags alone (before any kubeconfig or API call)."""

    capture: spec.CaptureSpec
    secrets: dict[str, str]
    wait_timeout: float


def plan_create(args: argparse.Namespace, namespace: str) -> CreatePlan:
    """Check every flag of ``create``; raises ``SpecError`` naming each bad one."""
    body, secrets = capture_from_flags(args, namespace)
    capture = spec.parse_capture(body)
    if args.wait_timeout is None:
        timeout = capture.duration + jobs_mod.DEADLINE_MARGIN_SECONDS
    else:
        try:
            timeout = bounded_duration(args.wait_timeout, minimum=1, maximum=7 * 24 * 3600)
        except ValueError as exc:
            raise spec.SpecError([spec.Problem("--wait-timeout", str(exc))]) from None
    if args.cleanup_after_upload and args.no_wait:
        raise spec.SpecError(
            [spec.Problem("--cleanup-after-upload", "cleans up after waiting for the upload; drop --no-wait")]
        )
    if not (0 < args.poll_interval <= 60):
        raise spec.SpecError([spec.Problem("--poll-interval", "must be more than 0 and at most 60 seconds")])
    return CreatePlan(capture, secrets, timeout)


def cmd_create(
    args: argparse.Namespace, client: kubernetes.client.ApiClient, namespace: str, plan: CreatePlan
) -> int:
    _warn_secret_flags(args)
    capture = plan.capture
    targets = kube.resolve_targets(client, capture)
    kube.check_job_limit(len(targets), args.job_num_limit)
    jobs = jobs_mod.build_jobs(capture, targets, image=args.image)
    secret = jobs_mod.build_secret(capture.name, namespace, **plan.secrets) if plan.secrets else None
    if args.debug:
        import yaml

        print(yaml.safe_dump_all(jobs, sort_keys=False), file=sys.stderr)
    try:
        created = kube.create_objects(client, namespace, capture.name, jobs, secret)
    except kube.CaptureExists:
        raise  # refused before anything was created; what exists belongs to another run
    except BaseException:
        _undo_create(client, namespace, capture.name)
        raise
    print(
        f"capture {capture.name}: created {len(created)} job(s) in namespace {namespace} on node(s) "
        f"{', '.join(sorted(targets))}"
    )
    if args.no_wait:
        print(f"not waiting; follow it with: kubectl retina capture list -n {namespace}")
        return 0
    code = _wait(client, namespace, capture.name, plan.wait_timeout, args.poll_interval)
    if args.cleanup_after_upload:
        if code != 0:
            print(f"capture {capture.name}: not cleaned up: not every node uploaded", file=sys.stderr)
            return code
        jobs, secrets = kube.delete_capture(client, namespace, capture.name)
        print(
            f"capture {capture.name}: every node uploaded; deleted {jobs} job(s) and {secrets} secret(s) "
            "(--cleanup-after-upload)"
        )
    return code


def _undo_create(client: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
    """Creating failed half-way: remove the Secret and the Jobs made so far (all or nothing)."""
    try:
        jobs, secrets = kube.delete_capture(client, namespace, name)
    except Exception as exc:  # the original error matters more; say what is left
        print(
            f"error: could not remove what was created ({type(exc).__name__}); remove it with: "
            f"kubectl retina capture delete --name {name} -n {namespace}",
            file=sys.stderr,
        )
        return
    if jobs or secrets:
        print(
            f"capture {name}: creation failed; removed {jobs} job(s) and {secrets} secret(s) it had created",
            file=sys.stderr,
        )


def _wait(
    client: kubernetes.client.ApiClient, namespace: str, name: str, timeout: float, interval: float
) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        summary = jobs_mod.summarize_jobs(kube.list_jobs(client, namespace, name))
        line = (
            f"capture {name}: {summary['total']} job(s): {summary['active']} running, "
            f"{summary['succeeded']} succeeded, {summary['failed']} failed"
        )
        if line != last:
            print(line, flush=True)
            last = line
        if summary["phase"] != "Running":
            if summary["failed"]:
                print(
                    f"capture {name} failed on {summary['failed']} node(s); see the Job logs "
                    f"(kubectl logs -n {namespace} -l {jobs_mod.capture_selector(name)})",
                    file=sys.stderr,
                )
                return 1
            print(
                f"capture {name} done; get it with: kubectl retina capture download --name {name} "
                f"-n {namespace}"
            )
            return 0
        if time.monotonic() > deadline:
            print(
                f"capture {name}: still running after {int(timeout)}s; stopped waiting (the Jobs go on)",
                file=sys.stderr,
            )
            return 1
        time.sleep(interval)


# -- list / delete / download ----------------------------------------------------------------


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    then = datetime.datetime.fromisoformat(timestamp)
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def list_rows(jobs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Retina's ``capture list`` table: NAMESPACE, CAPTURE NAME, JOBS (the Job names), COMPLETIONS
    (succeeded/total), AGE; then STATUS, which Retina leaves out (a failed node is easy to miss)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for job in jobs:
        key = (job["metadata"]["namespace"], job["metadata"]["labels"][jobs_mod.LABEL_CAPTURE])
        groups.setdefault(key, []).append(job)
    rows: list[tuple[str, ...]] = [("NAMESPACE", "CAPTURE NAME", "JOBS", "COMPLETIONS", "AGE", "STATUS")]
    for (ns, name), group in sorted(groups.items()):
        s = jobs_mod.summarize_jobs(group)
        created = min(j["metadata"].get("creationTimestamp") or "" for j in group)
        job_names = ",".join(sorted(j["metadata"]["name"] for j in group))
        rows.append((ns, name, job_names, f"{s['succeeded']}/{s['total']}", _age(created), s["phase"]))
    return rows


def cmd_list(args: argparse.Namespace, client: kubernetes.client.ApiClient, namespace: str) -> int:
    rows = list_rows(kube.list_jobs(client, None if args.all_namespaces else namespace))
    if len(rows) == 1:
        where = "any namespace" if args.all_namespaces else f"namespace {namespace}"
        print(f"No captures found in {where}.")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:  # tabwriter-style, three spaces between columns, as Retina prints it
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_delete(args: argparse.Namespace, client: kubernetes.client.ApiClient, namespace: str) -> int:
    jobs, secrets = kube.delete_capture(client, namespace, args.name)
    if not jobs and not secrets:
        print(f"--name: no capture {args.name!r} in namespace {namespace!r}", file=sys.stderr)
        return 1
    print(f"capture {args.name} deleted from namespace {namespace}: {jobs} job(s), {secrets} secret(s)")
    return 0


def check_download_dirs(args: argparse.Namespace) -> None:
    """One of --name/--all/-A; ``-o`` and ``--from-dir`` usable directories. Raises ``UsageError``."""
    chosen = [
        flag for flag, on in (("--name", args.name), ("--all", args.all), ("-A", args.all_namespaces)) if on
    ]
    if len(chosen) != 1:
        raise UsageError(
            "--name: give the capture's --name, or --all (every capture in the namespace), "
            "or -A/--all-namespaces" + (f" (not {' and '.join(chosen)} together)" if chosen else "")
        )
    if args.from_dir is not None and not args.name:
        raise UsageError("--from-dir: merges one capture; give its --name")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o/--output: {args.output!r} is not a directory; give a directory to write to")
    if args.from_dir is not None and not Path(args.from_dir).is_dir():
        what = "does not exist" if not Path(args.from_dir).exists() else "is not a directory"
        raise UsageError(
            f"--from-dir: {args.from_dir!r} {what}; give the directory holding the "
            f"{args.name}-<node>-<time>UTC.tar.gz files"
        )


def _merge(files: list[Path], name: str, out_dir: Path, from_dir: bool) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = out_dir / f"{name}-merged.pcapng"
    try:
        counts = merge_mod.merge(files, name, merged)
    except merge_mod.MergeError as exc:
        where = "--from-dir: " if from_dir else ""
        print(f"error: {where}{exc}; nothing was merged", file=sys.stderr)
        return 2 if from_dir else 1
    per_node = ", ".join(f"{node}: {n}" for node, n in counts.items())
    print(f"merged {sum(counts.values())} packets ({per_node}) into {merged}")
    return 0


def _download_one(
    args: argparse.Namespace, client: kubernetes.client.ApiClient, namespace: str, name: str, out_dir: Path
) -> int:
    result = download_mod.download(client, namespace, name, out_dir, pod_start_timeout=args.pod_start_timeout)
    for f in result.files:
        print(f"downloaded {f}")
    for remote, why in result.refused.items():
        print(f"warning: not downloaded: {remote!r}: {why}", file=sys.stderr)
    if not result.files:
        print(f"capture {name}: no tarballs to download yet", file=sys.stderr)
        return 1
    code = _merge(result.files, name, out_dir, from_dir=False) if args.merge else 0
    return code or (1 if result.refused else 0)


def cmd_download(args: argparse.Namespace, client: kubernetes.client.ApiClient | None, namespace: str) -> int:
    out_dir = Path(args.output)
    if args.from_dir:
        files = download_mod.local_tarballs(Path(args.from_dir), args.name)
        if not files:
            print(f"--from-dir: no {args.name}-<node>-<time>UTC.tar.gz in {args.from_dir}", file=sys.stderr)
            return 1
        return _merge(files, args.name, out_dir, from_dir=True) if args.merge else 0
    assert client is not None
    if args.name:
        return _download_one(args, client, namespace, args.name, out_dir)
    # --all / -A: every capture that has Jobs; one failing capture does not stop the others.
    captures = sorted(
        {
            (job["metadata"]["namespace"], job["metadata"]["labels"][jobs_mod.LABEL_CAPTURE])
            for job in kube.list_jobs(client, None if args.all_namespaces else namespace)
        }
    )
    if not captures:
        where = "any namespace" if args.all_namespaces else f"namespace {namespace}"
        print(f"No captures found in {where}.", file=sys.stderr)
        return 1
    worst = 0
    for ns, name in captures:
        target = out_dir / ns if args.all_namespaces else out_dir
        try:
            code = _download_one(args, client, ns, name, target)
        except download_mod.DownloadError as exc:
            print(f"error: capture {ns}/{name}: {exc}", file=sys.stderr)
            code = 1
        worst = max(worst, code)
    return worst


# -- entry point -----------------------------------------------------------------------------


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--duration -5s`` -> ``--duration=-5s``, so the value is checked (argparse would call it a flag)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"-\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the cluster or a download failed; 2 bad usage (nothing was done)."""
    try:
        args = build_parser().parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    except UsageError as exc:
        print(f"error: {exc}\nsee kubectl retina capture --help", file=sys.stderr)
        return 2
    if args.command == "version":
        print(f"kubectl-retina {VERSION} (Retina capture compatible)")
        return 0
    if args.command in OBSERVE_COMMANDS:
        return observe_mod.run(OBSERVE_COMMANDS[args.command], args)
    # Everything the flags alone decide is checked before the kubeconfig is read.
    namespace = args.namespace or kube.default_namespace(args.kubeconfig, args.context)
    try:
        plan = plan_create(args, namespace) if args.action == "create" else None
        if args.action == "download":
            check_download_dirs(args)
    except spec.SpecError as exc:
        print(f"error: {exc.for_cli()}\nnothing was created", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    client = None
    if not (args.action == "download" and args.from_dir):
        try:
            client = kube.api_client(args.kubeconfig, args.context)
        except (kube.KubeconfigError, kubernetes.config.ConfigException, OSError, ValueError) as exc:
            print(
                f"error: cannot load the kubeconfig: {exc} (give --kubeconfig or set KUBECONFIG)",
                file=sys.stderr,
            )
            return 1
    try:
        if args.action == "create":
            assert client is not None and plan is not None
            return cmd_create(args, client, namespace, plan)
        handler = {"list": cmd_list, "delete": cmd_delete, "download": cmd_download}[args.action]
        return handler(args, client, namespace)
    except spec.SpecError as exc:
        print(f"error: {exc.for_cli()}\nnothing was created", file=sys.stderr)
        return 2
    except kube.JobLimitExceeded as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except (kube.CaptureExists, download_mod.DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiException as exc:
        print(f"error: the API server said {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    except urllib3.exceptions.HTTPError as exc:
        host = client.configuration.host if client is not None else "?"
        reason = getattr(exc, "reason", None) or exc
        print(
            f"error: cannot reach the Kubernetes API server at {host}: {_short_reason(reason)}; check that "
            "the cluster is up and that --kubeconfig/--context name it",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:  # writing downloads or the merged file: a full disk, no permission
        print(f"error: {exc.filename or '-o'}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()


def _short_reason(reason: object) -> str:
    """urllib3 wraps the socket error in a long repr; keep its last, human part."""
    text = str(reason)
    return text.rsplit(": ", 1)[-1].rstrip(")'\"") if ": " in text else text


if __name__ == "__main__":
    sys.exit(main())

"""Running the commands that read metrics back (diagnose, map): one place for their errors,
each a clear message; exit code 1, or 2 for a bad flag value."""

from __future__ import annotations

import argparse
import sys

import kubernetes
from kubernetes.client.rest import ApiException

from retina_capture.observe.cluster import PodNotFound
from retina_capture.observe.prometheus import PrometheusError


def run(module, args: argparse.Namespace) -> int:
    try:
        return module.run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PodNotFound, PrometheusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiException as exc:
        print(f"error: the API server said {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    except (kubernetes.config.ConfigException, FileNotFoundError) as exc:
        print(
            f"error: cannot load the kubeconfig: {exc} (give --kubeconfig or set KUBECONFIG)", file=sys.stderr
        )
        return 1

"""Prometheus, found the way the installer wired it, and counts over a time window.

Where Prometheus is, first match wins:

1. ``--prometheus URL`` (e.g. after ``kubectl port-forward -n monitoring svc/prometheus-operated
   9090``)
2. ``$RETINA_PROMETHEUS_URL``
3. the installer's wiring (role ``retina.observability.prometheus``): the Prometheus resource in
   namespace ``monitoring`` (``prometheus_namespace``), whose operator-made Service
   ``prometheus-operated`` serves port 9090 (``web``); reached through the API server's service
   proxy with the kubeconfig's credentials, so nothing else needs to be exposed.

Counts: the agents' metrics are cumulative, and a pod-level series is born with its first
packets, so ``increase()`` (which needs two samples) would miss the first ones. ``window_delta``
takes the last value in the window minus the value at its start, a series born inside the
window counting from zero, a series whose value fell (agent restart) from its restart.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

ENV_URL = "RETINA_PROMETHEUS_URL"
DEFAULT_NAMESPACE = "monitoring"
DEFAULT_SERVICE = "prometheus-operated:9090"


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused a query; the message says which and why."""


class Prometheus:
    """Instant queries against ``url`` (direct) or through the API server's service proxy."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_client=None,
        namespace: str = DEFAULT_NAMESPACE,
        service: str = DEFAULT_SERVICE,
        timeout: float = 30,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.api_client = api_client
        self.namespace, self.service, self.timeout = namespace, service, timeout
        if self.url is None and api_client is None:
            raise PrometheusError(f"no Prometheus: give --prometheus URL or set {ENV_URL}")

    @property
    def where(self) -> str:
        if self.url:
            return self.url
        return (
            f"service {self.namespace}/{self.service} through the API server "
            f"({self.api_client.configuration.host})"
        )

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query", params)
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {promql!r}: {body.get('error', body)}")
        return body["data"]["result"]

    def _get(self, path: str, params: dict[str, str]) -> dict:
        if self.url:
            url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus' own error
                try:
                    return json.loads(exc.read())
                except ValueError:
                    raise PrometheusError(f"Prometheus at {self.url} answered {exc.code}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise PrometheusError(
                    f"cannot reach Prometheus at {self.url}: {getattr(exc, 'reason', exc)}"
                ) from None
        proxy = f"/api/v1/namespaces/{self.namespace}/services/{self.service}/proxy{path}"
        client = self.api_client
        try:
            method, url, headers, body, post = client.param_serialize(
                "GET", proxy, query_params=list(params.items()), auth_settings=["BearerToken"]
            )
            response = client.call_api(
                method, url, header_params=headers, body=body, post_params=post, _request_timeout=self.timeout
            )
            response.read()
        except Exception as exc:  # urllib3 and the client raise many kinds; all mean "unreached"
            raise PrometheusError(f"cannot reach Prometheus ({self.where}): {exc}") from None
        if response.status >= 400 and response.status not in (400, 422):  # 400/422: PromQL's
            raise PrometheusError(
                f"cannot reach Prometheus as the installer wires it ({self.where}): the API "
                f"server said {response.status} {response.reason}; give --prometheus URL (e.g. "
                f"after kubectl port-forward -n {self.namespace} svc/prometheus-operated 9090) "
                f"or set {ENV_URL}"
            )
        try:
            return json.loads(response.data)
        except ValueError:
            raise PrometheusError(f"Prometheus ({self.where}) did not answer JSON") from None


def connect(
    url: str | None, api_client_factory, namespace: str = DEFAULT_NAMESPACE, service: str = DEFAULT_SERVICE
) -> Prometheus:
    """The Prometheus a command should read: flag, environment, then the installer's wiring."""
    url = url or os.environ.get(ENV_URL) or None
    if url:
        if not url.startswith(("http://", "https://")):
            raise PrometheusError(
                f"--prometheus: {url!r} is not an http(s) URL; write it like http://127.0.0.1:9090"
            )
        return Prometheus(url)
    return Prometheus(api_client=api_client_factory(), namespace=namespace, service=service)


def selector(labels: dict[str, str]) -> str:
    """``{a="x",b="y"}`` with values escaped for PromQL."""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _key(metric: dict[str, str], by: Iterable[str]) -> tuple[str, ...]:
    return tuple(metric.get(k, "") for k in by)


def window_delta(
    prom: Prometheus,
    metric: str,
    labels: dict[str, str],
    by: tuple[str, ...],
    window: float,
    at: float | None = None,
) -> dict[tuple[str, ...], float]:
    """How much ``metric`` grew in the ``window`` seconds up to ``at``, summed by ``by``."""
    sel = selector(labels)
    seconds = f"{max(int(window), 1)}s"
    now = prom.query(f"last_over_time({metric}{sel}[{seconds}])", at)
    start = prom.query(f"last_over_time({metric}{sel}[{seconds}] offset {seconds})", at)
    before = {_series_id(s["metric"]): float(s["value"][1]) for s in start}
    totals: dict[tuple[str, ...], float] = {}
    for s in now:
        value = float(s["value"][1])
        base = before.get(_series_id(s["metric"]), 0.0)
        grew = value - base if value >= base else value  # fell: the counter restarted
        key = _key(s["metric"], by)
        totals[key] = totals.get(key, 0.0) + grew
    return {k: v for k, v in totals.items() if v > 0}


def _series_id(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(metric.items()))


def present(
    prom: Prometheus,
    metric: str,
    labels: dict[str, str],
    window: float,
    by: tuple[str, ...] = (),
    at: float | None = None,
) -> list[dict[str, str]]:
    """Label sets of ``metric`` series seen in the window (``by``: only those labels)."""
    seconds = f"{max(int(window), 1)}s"
    expr = f"last_over_time({metric}{selector(labels)}[{seconds}])"
    if by:
        expr = f"count by ({', '.join(by)}) ({expr})"
    return [s["metric"] for s in prom.query(expr, at)]

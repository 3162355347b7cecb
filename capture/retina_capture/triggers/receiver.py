"""The Alertmanager webhook receiver: Alertmanager's ``webhook_configs`` JSON (version 4) in,
CaptureTrigger decisions out.

Routes (all POSTs need ``Authorization: Bearer <token>``, as Alertmanager's ``http_config``
sends it with ``authorization: {credentials_file: ...}``):

* ``POST /v1/triggers/<namespace>/<name>``: this trigger only (404 when there is none, 409 when
  it is invalid); an Alertmanager receiver per trigger;
* ``POST /v1/alerts``: every valid trigger whose matchers match;
* ``GET /healthz``: no token needed.

Answers: 200 with ``{"decisions": [...]}`` (one per alert and matching trigger: result, reason,
capture); 400 for a body that is not a version-4 notification (the message names the field);
401 for a missing or wrong token; 413 for a body over 1 MiB. A refused request changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.web

from retina_capture.spec import SpecError
from retina_capture.triggers.decide import Decision, TriggerEngine
from retina_capture.triggers.model import TriggerSpec

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
#: (namespace, name) -> the parsed trigger, or the SpecError that makes it unusable.
Registry = Mapping[tuple[str, str], "TriggerSpec | SpecError"]


class BadNotification(ValueError):
    """The body is not an Alertmanager version-4 notification; the message names the field."""


def parse_notification(raw: bytes) -> list[dict[str, Any]]:
    """The alerts of a webhook body, checked field by field."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadNotification(f"body: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadNotification("body: must be a JSON object (Alertmanager webhook, version 4)")
    if body.get("version") != "4":
        raise BadNotification(
            f'version: {body.get("version")!r}; this receiver reads Alertmanager\'s version "4"'
        )
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise BadNotification("alerts: must be a list")
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise BadNotification(f"alerts[{i}]: must be an object")
        if alert.get("status") not in ("firing", "resolved"):
            raise BadNotification(f"alerts[{i}].status: {alert.get('status')!r} is not firing or resolved")
        labels = alert.get("labels")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise BadNotification(f"alerts[{i}].labels: must map label names to strings")
        if "fingerprint" in alert and not isinstance(alert["fingerprint"], str):
            raise BadNotification(f"alerts[{i}].fingerprint: must be a string")
    return alerts


class Receiver:
    """The aiohttp application; ``registry()`` gives the current triggers (the operator's memo)."""

    def __init__(self, engine: TriggerEngine, registry: Callable[[], Registry], token: str) -> None:
        if not token:
            raise ValueError("the webhook receiver needs a bearer token (RETINA_OPERATOR_WEBHOOK_TOKEN_FILE)")
        self.engine, self.registry, self._token = engine, registry, token.encode()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.app = aiohttp.web.Application(client_max_size=MAX_BODY)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_post("/v1/alerts", self._all_triggers)
        self.app.router.add_post("/v1/triggers/{namespace}/{name}", self._one_trigger)

    async def _healthz(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"status": "ok", "triggers": len(self.registry())})

    def _authorized(self, request: aiohttp.web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)

    async def _read(self, request: aiohttp.web.Request) -> list[dict[str, Any]]:
        if not self._authorized(request):
            raise aiohttp.web.HTTPUnauthorized(
                text="missing or wrong bearer token\n",
                headers={"WWW-Authenticate": 'Bearer realm="retina-capture"'},
            )
        try:
            raw = await request.read()
        except aiohttp.web.HTTPRequestEntityTooLarge:
            raise
        try:
            return parse_notification(raw)
        except BadNotification as exc:
            raise aiohttp.web.HTTPBadRequest(text=f"{exc}\n") from None

    async def _one_trigger(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        alerts = await self._read(request)
        key = (request.match_info["namespace"], request.match_info["name"])
        trigger = self.registry().get(key)
        if trigger is None:
            raise aiohttp.web.HTTPNotFound(text=f"no CaptureTrigger {key[0]}/{key[1]}\n")
        if isinstance(trigger, SpecError):
            raise aiohttp.web.HTTPConflict(text=f"CaptureTrigger {key[0]}/{key[1]} is invalid: {trigger}\n")
        return aiohttp.web.json_response({"decisions": await self._decide([trigger], alerts)})

    async def _all_triggers(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        alerts = await self._read(request)
        triggers = [t for t in self.registry().values() if isinstance(t, TriggerSpec)]
        return aiohttp.web.json_response({"decisions": await self._decide(triggers, alerts)})

    async def _decide(
        self, triggers: list[TriggerSpec], alerts: list[dict[str, Any]]
    ) -> list[dict[str, str]]:
        decisions: list[Decision] = []
        for trigger in triggers:
            lock = self._locks.setdefault((trigger.namespace, trigger.name), asyncio.Lock())
            async with (
                lock
            ):  # one alert at a time per trigger: the cooldown check and the create are one step
                for alert in alerts:
                    decision = await asyncio.to_thread(self.engine.handle, trigger, alert)
                    if decision is not None:
                        log.info(
                            "trigger %s: %s %s (%s)",
                            decision.trigger,
                            decision.result,
                            decision.capture or decision.target,
                            decision.reason,
                        )
                        decisions.append(decision)
        return [d.as_dict() for d in decisions]


async def serve(receiver: Receiver, host: str, port: int) -> aiohttp.web.AppRunner:
    """Start serving on host:port in the running loop; ``await runner.cleanup()`` stops it."""
    runner = aiohttp.web.AppRunner(receiver.app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner

"""v2 webhooks: a submit may name a `webhook` URL; when its job starts or ends (the events it
asked for), the Gateway POSTs the body the result route answers there, signed as the Standard
Webhooks specification signs (the `standardwebhooks` library: `webhook-id`,
`webhook-timestamp`, `webhook-signature`, HMAC-SHA256 with the API key's `webhook_secret`).

Deliveries are durable in the job store: a terminal write schedules its event in the same atomic
step (gateway/jobs/store.py), and `WebhookDeliverer` loops, apart from the job workers, take due
deliveries under a lease, so a Gateway that dies before or during a delivery leaves it to any
other (or its own next start). A failed attempt (no connection, a timeout, a non-2xx answer) is
retried with exponential backoff for `DEPTHID_WEBHOOK_RETRY_FOR_S`; a URL the SSRF guard refuses
(gateway/schemas/url_fetch.py: at submit, and again at every attempt and redirect) is given up
at once. Each attempt is recorded on the job, and its status body shows them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from gateway import metrics
from gateway.http.errors import ApiError
from gateway.jobs.store import WEBHOOK_EVENTS, JobRecord, JobStore
from gateway.schemas.url_fetch import post_vetted, vet_url
from gateway.tenancy import ANONYMOUS
from gateway.tenancy.api_keys import KeyRing, Tenant
from settings import Settings

logger = logging.getLogger(__name__)

FIELD = "webhook"
EVENTS_FIELD = "webhook_events"
# The v2 submit fields this module reads: not the model's, yet not ignored either.
SUBMIT_FIELDS = (FIELD, EVENTS_FIELD)
DEFAULT_EVENTS = ("completed", "failed", "cancelled")  # the job's end, whichever it is
MAX_URL_CHARS = 2048
BACKOFF_CAP_S = 600.0
POLL_S = 0.2  # how often an idle delivery loop looks for due deliveries
ERROR_PAUSE_S = 1.0  # after a job store error
LEASE_MARGIN_S = 10.0  # a taken delivery is due again this long after its attempt's timeout
USER_AGENT = "DepthID-Webhooks/1"


async def webhook_of(
    data: dict, tenant: Tenant, settings: Settings
) -> tuple[str | None, list[str]]:
    """The submit body's `webhook` and `webhook_events`, checked: 400 naming the field for a URL
    that is not http(s), too long, or reaches a refused address, for an unknown event, or when
    there is no secret to sign with."""
    url = data.get(FIELD)
    if url is None:
        return None, []
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise ApiError.bad_field(
            FIELD, f"{FIELD} must be an http(s) URL of at most 2048 characters"
        )
    events = data.get(EVENTS_FIELD, list(DEFAULT_EVENTS))
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(event, str) and event in WEBHOOK_EVENTS for event in events)
    ):
        raise ApiError.bad_field(
            EVENTS_FIELD, f"{EVENTS_FIELD} must be a non-empty list of: {', '.join(WEBHOOK_EVENTS)}"
        )
    if signing_secret(tenant.name, tenant, settings) is None:
        where = (
            "DEPTHID_WEBHOOK_SECRET is unset"
            if tenant.name == ANONYMOUS
            else "this API key has no webhook_secret in the keys file (the keys CLI makes one)"
        )
        raise ApiError.bad_field(FIELD, f"webhooks need a signing secret, and {where}")
    await vet_url(url, field=FIELD, settings=settings, action="deliver to")
    return url, list(dict.fromkeys(events))


def signing_secret(owner: str, tenant: Tenant | None, settings: Settings) -> str | None:
    """The secret that signs `owner`'s webhooks: its key's, or the setting's with keys off."""
    if owner == ANONYMOUS:
        return settings.webhook_secret
    return tenant.webhook_secret if tenant is not None else None


def status_details(record: JobRecord) -> dict[str, Any]:
    """The `webhook` object of a job's status body: where, which events, each event's delivery
    state and every attempt."""
    return {
        "url": record.webhook,
        "events": record.webhook_events,
        "deliveries": record.webhook_deliveries,
        "attempts": record.webhook_attempts,
    }


def payload_of(record: JobRecord, event: str) -> dict:
    """What is POSTed: for an end, the body the result route answers; for `started`, the status
    body."""
    if event == "started" or record.result is None:
        return {"request_id": record.id, "status": "PROCESSING"}
    return record.result


def backoff_s(failures: int, first_s: float) -> float:
    """The wait after the `failures`-th failed attempt: first_s, doubling, capped."""
    return min(BACKOFF_CAP_S, first_s * 2 ** (failures - 1))


class WebhookDeliverer:
    """`settings.webhook_workers` loops that make due deliveries, in every Gateway process."""

    def __init__(
        self, store: JobStore, settings: Settings, keys: Callable[[], KeyRing | None]
    ) -> None:
        self.store = store
        self.settings = settings
        self.keys = keys
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self._loops: list[asyncio.Task] = []
        self._stopping = False

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._loop(), name=f"webhooks-{i}")
            for i in range(self.settings.webhook_workers)
        ]

    async def stop(self) -> None:
        """Stop at once: a delivery cut short is due again when its lease ends."""
        # The flag as well as the cancel: Python 3.11's asyncio.wait_for (redis-py sends with
        # it) can swallow a cancel that lands as its command completes, and the loop would go
        # on; it then ends at its next turn.
        self._stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                taken = await self.store.take_delivery(self.lease_s)
                if taken is None:
                    await asyncio.sleep(POLL_S)
                    continue
                await self.deliver(*taken)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("webhooks: job store error; going on")
                await asyncio.sleep(ERROR_PAUSE_S)

    async def deliver(self, job_id: str, event: str) -> None:
        """One attempt at `event` of `job_id`, recorded on the job; retried later or not."""
        record = await self.store.get(job_id)
        if record is None or not record.webhook:  # expired meanwhile: nothing to send
            await self.store.record_delivery(job_id, event, {}, "failed", None)
            return
        started = time.time()
        attempt: dict[str, Any] = {"event": event, "at": round(started, 3)}
        outcome, error = await self._post(record, event, attempt)
        earlier = [a for a in record.webhook_attempts if a.get("event") == event]
        failures = 1 + sum(not 200 <= a.get("status_code", 0) < 300 for a in earlier)
        first_at = earlier[0]["at"] if earlier else started
        retry_at = None
        if outcome == "failed":
            retry_at = started + backoff_s(failures, self.settings.webhook_backoff_s)
            if retry_at - first_at > self.settings.webhook_retry_for_s:
                outcome, retry_at = "given_up", None
        state = {"delivered": "delivered", "failed": "pending", "given_up": "failed"}[outcome]
        metrics.count_webhook_delivery("retrying" if outcome == "failed" else outcome)
        if outcome != "delivered":
            logger.warning(
                "job %s: webhook %s %s (attempt %d): %s",
                job_id, event, "given up" if retry_at is None else "failed", failures, error,
            )  # fmt: skip
        await self.store.record_delivery(job_id, event, attempt, state, retry_at)

    async def _post(self, record: JobRecord, event: str, attempt: dict) -> tuple[str, str]:
        """POST the event; ("delivered" | "failed" | "given_up", why), `attempt` filled in."""
        ring = self.keys()
        tenant = ring.named(record.owner) if ring is not None else None
        secret = signing_secret(record.owner, tenant, self.settings)
        if secret is None:
            attempt["error"] = "no signing secret for this job's API key any more"
            return "given_up", attempt["error"]
        body = json.dumps(payload_of(record, event)).encode()
        message_id = f"msg_{record.id}_{event}"  # the same for every retry: receivers dedupe
        now = datetime.now(tz=UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(message_id, now, body),
        }
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                status = await post_vetted(
                    record.webhook or "",
                    field=FIELD,
                    content=body,
                    headers=headers,
                    settings=self.settings,
                )
        except ApiError as exc:  # the guard refused the URL or a redirect: never retried
            attempt["error"] = exc.message
            return "given_up", exc.message
        except (TimeoutError, httpx.TimeoutException):
            attempt["error"] = f"timed out after {self.settings.webhook_timeout_s:g} s"
            return "failed", attempt["error"]
        except httpx.HTTPError as exc:
            attempt["error"] = f"the connection failed: {type(exc).__name__}"
            return "failed", attempt["error"]
        attempt["status_code"] = status
        if 200 <= status < 300:
            return "delivered", ""
        return "failed", f"the receiver answered HTTP {status}"

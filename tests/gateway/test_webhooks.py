"""v2 webhooks (gateway/webhooks.py) on both job stores, against a receiver on loopback: the
result body signed per Standard Webhooks (verified with the `standardwebhooks` library), each
attempt on the job's status; a receiver that is down, answers 500, is slow, or redirects to a
refused address; the SSRF guard at submit; a Gateway gone with a delivery pending."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import redis
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from gateway.tenancy.api_keys import new_webhook_secret
from gateway.webhooks import WebhookDeliverer
from settings import Settings
from tests.support.api_key_helpers import (
    SD15,
    HeldRunner,
    entry,
    headers,
    make_client,
    sd15_body,
    status_of,
    write_keys,
)
from tests.support.helpers import RecordingRunner, assert_error, wait_until
from tests.support.webhook_receiver import receiver

SECRET = new_webhook_secret()
# Loopback receivers are allowed (as in the image URL tests); a retry comes after 0.1 s.
QUICK = {"url_allowed_networks": ["127.0.0.0/8"], "webhook_backoff_s": 0.1}
TEAM = headers("team-a")


@pytest.fixture
def keys(tmp_path):
    return write_keys(tmp_path, entry("team-a", webhook_secret=SECRET), entry("team-b"))


def deliveries(outcome: str) -> float:
    labels = {"outcome": outcome}
    return REGISTRY.get_sample_value("depthid_webhook_deliveries_total", labels) or 0.0


def webhook_status(client, request_id: str) -> dict:
    return client.get(f"/v2/requests/{request_id}/status", headers=TEAM).json()["webhook"]


def submit(client, **fields) -> str:
    response = client.post(f"/v2/{SD15}", json=sd15_body(**fields), headers=TEAM)
    assert response.status_code == 200, response.text
    assert "ignored_fields" not in response.json()  # webhook fields are v2's own
    return response.json()["request_id"]


def test_the_result_is_posted_signed_and_each_attempt_recorded(backend, keys):
    delivered_before = deliveries("delivered")
    with receiver() as hook, make_client(keys, **QUICK, **backend) as client:
        request_id = submit(client, webhook=hook.url, webhook_events=["started", "completed"])
        assert wait_until(lambda: len(hook.received) == 2, 10)
        result = client.get(f"/v2/requests/{request_id}", headers=TEAM).json()
        events = {}
        for sent_headers, body in hook.received:
            # Verified as a receiver does, with the key's secret: signature, id, timestamp.
            payload = Webhook(SECRET).verify(body, sent_headers)
            events[payload["status"]] = (payload, sent_headers["webhook-id"])
        assert events["COMPLETED"][0] == result  # the body the result route answers
        assert events["PROCESSING"][0] == {"request_id": request_id, "status": "PROCESSING"}
        assert events["COMPLETED"][1] == f"msg_{request_id}_completed"
        assert wait_until(
            lambda: (
                webhook_status(client, request_id)["deliveries"]
                == {"started": "delivered", "completed": "delivered"}
            ),
            10,
        )
        status = webhook_status(client, request_id)
        assert status["url"] == hook.url and status["events"] == ["started", "completed"]
        assert sorted(a["event"] for a in status["attempts"]) == ["completed", "started"]
        assert all(a["status_code"] == 200 for a in status["attempts"])
        # A tampered body fails the check.
        sent_headers, body = hook.received[-1]
        with pytest.raises(Exception, match="signature"):
            Webhook(SECRET).verify(body.replace(b"}", b',"x":1}', 1), sent_headers)
    assert deliveries("delivered") == delivered_before + 2


def test_a_receiver_that_is_down_then_answers_500_is_retried_until_it_takes_it(backend, keys):
    with receiver(start=False) as hook, make_client(keys, **QUICK, **backend) as client:
        request_id = submit(client, webhook=hook.url)
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "COMPLETED", 10)
        # Down: connections refused; the job completed all the same, the delivery waits.
        assert wait_until(lambda: len(webhook_status(client, request_id)["attempts"]) >= 2, 10)
        assert webhook_status(client, request_id)["deliveries"] == {"completed": "pending"}
        hook.status = 500
        hook.start()
        assert wait_until(lambda: len(hook.received) >= 2, 10)  # 500: tried again
        hook.status = 200
        assert wait_until(
            lambda: webhook_status(client, request_id)["deliveries"] == {"completed": "delivered"},
            10,
        )
        attempts = webhook_status(client, request_id)["attempts"]
        assert "connection failed" in attempts[0]["error"]
        assert 500 in [a.get("status_code") for a in attempts]
        assert attempts[-1]["status_code"] == 200
        # Every attempt carried the same message id: a receiver can drop duplicates.
        assert {h["webhook-id"] for h, _ in hook.received} == {f"msg_{request_id}_completed"}


def test_a_slow_receiver_never_holds_a_job_and_is_given_up_after_the_retry_time(backend, keys):
    runner = RecordingRunner()
    settings = {**QUICK, "webhook_timeout_s": 0.3, "webhook_retry_for_s": 1.0}
    with receiver() as hook, make_client(keys, {SD15: runner}, **settings, **backend) as client:
        hook.delay_s = 2.0
        first = submit(client, webhook=hook.url)
        second = submit(client)  # one job worker: it runs while the first's delivery hangs
        assert wait_until(lambda: status_of(client, second, "team-a") == "COMPLETED", 10)
        assert wait_until(
            lambda: webhook_status(client, first)["deliveries"] == {"completed": "failed"}, 20
        )
        attempts = webhook_status(client, first)["attempts"]
        assert all("timed out" in a["error"] for a in attempts)


def test_a_redirect_to_a_refused_address_is_given_up_at_once(backend, keys):
    given_up_before = deliveries("given_up")
    with receiver() as hook, make_client(keys, **QUICK, **backend) as client:
        hook.redirect_to = "http://169.254.169.254/latest/meta-data/"  # cloud metadata
        request_id = submit(client, webhook=hook.url)
        assert wait_until(
            lambda: webhook_status(client, request_id)["deliveries"] == {"completed": "failed"},
            10,
        )
        [attempt] = webhook_status(client, request_id)["attempts"]
        assert "not allowed" in attempt["error"]
        assert len(hook.received) == 1  # not tried again
    assert deliveries("given_up") == given_up_before + 1


def test_submit_refuses_a_webhook_it_could_not_or_would_not_send(keys):
    with make_client(keys) as client:
        for url in ("http://10.0.0.1/hook", "http://169.254.169.254/", "ftp://example.com/"):
            refused = client.post(f"/v2/{SD15}", json=sd15_body(webhook=url), headers=TEAM)
            assert_error(refused, 400, "webhook")
        bad_events = sd15_body(webhook="http://127.0.0.1:9/", webhook_events=["finished"])
        assert_error(client.post(f"/v2/{SD15}", json=bad_events, headers=TEAM), 400)
        # team-b has no webhook secret: nothing to sign with.
        unsigned = client.post(
            f"/v2/{SD15}", json=sd15_body(webhook="http://8.8.8.8/"), headers=headers("team-b")
        )
        assert "webhook_secret" in assert_error(unsigned, 400, "webhook")["error"]
    with make_client(None) as client:  # keys off, DEPTHID_WEBHOOK_SECRET unset
        unsigned = client.post(f"/v2/{SD15}", json=sd15_body(webhook="http://8.8.8.8/"))
        assert "DEPTHID_WEBHOOK_SECRET" in assert_error(unsigned, 400, "webhook")["error"]


def test_keys_off_the_setting_signs_and_v1_ignores_the_field():
    with receiver() as hook, make_client(None, webhook_secret=SECRET, **QUICK) as client:
        response = client.post(f"/v2/{SD15}", json=sd15_body(webhook=hook.url))
        assert response.status_code == 200
        assert wait_until(lambda: len(hook.received) == 1, 10)
        sent_headers, body = hook.received[0]
        assert Webhook(SECRET).verify(body, sent_headers)["status"] == "COMPLETED"
        v1 = client.post(f"/v1/{SD15}", json=sd15_body(webhook=hook.url))
        assert v1.headers["x-ignored-fields"] == "webhook"


def test_a_delivery_pending_when_its_gateway_goes_is_made_by_the_next(redis_url, keys):
    """The job ends while its receiver is down; that Gateway goes (its delivery loops stop
    mid-wait) and another, on the same Redis, makes the delivery once the receiver is up."""
    redis.Redis.from_url(redis_url).flushall()
    overrides = {**QUICK, "job_store_url": redis_url, "webhook_backoff_s": 0.5}
    runner = HeldRunner()
    with receiver(start=False) as hook:
        with make_client(keys, {SD15: runner}, **overrides) as first:
            request_id = submit(first, webhook=hook.url)
            runner.release.set()
            assert wait_until(lambda: status_of(first, request_id, "team-a") == "COMPLETED", 10)
        # The first Gateway is gone with the delivery pending; it stays due in the store.
        store = redis.Redis.from_url(redis_url)
        assert store.zscore("depthid:webhooks", f"{request_id}|completed") is not None
        hook.start()
        with make_client(keys, **overrides) as second:
            assert wait_until(lambda: len(hook.received) == 1, 10)
            payload = Webhook(SECRET).verify(hook.received[0][1], hook.received[0][0])
            assert payload["request_id"] == request_id
            assert wait_until(
                lambda: (
                    webhook_status(second, request_id)["deliveries"] == {"completed": "delivered"}
                ),
                10,
            )
        assert store.zcard("depthid:webhooks") == 0


def test_a_cancelled_job_sends_its_cancel(backend, keys):
    runner = HeldRunner()
    with receiver() as hook, make_client(keys, {SD15: runner}, **QUICK, **backend) as client:
        request_id = submit(client, webhook=hook.url)
        assert runner.started.wait(10)
        assert client.post(f"/v2/requests/{request_id}/cancel", headers=TEAM).status_code == 200
        assert wait_until(lambda: len(hook.received) == 1, 10)
        assert json.loads(hook.received[0][1]) == {"request_id": request_id, "status": "CANCELLED"}
        runner.release.set()


class _SwallowingStore:
    """A job store whose take_delivery swallows a cancel, as redis-py's send does when the cancel
    lands as the command completes (Python 3.11's asyncio.wait_for)."""

    def __init__(self) -> None:
        self.takes = 0

    async def take_delivery(self, lease_s: float) -> None:
        self.takes += 1
        # Swallowed: the loop goes on as if nothing happened.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)


def test_stopping_the_deliverer_ends_even_when_a_cancel_is_swallowed():
    async def scenario() -> float:
        deliverer = WebhookDeliverer(_SwallowingStore(), Settings(webhook_workers=2), lambda: None)
        deliverer.start()
        await asyncio.sleep(0.02)  # each loop in take_delivery
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(10):  # before the flag, this waited for ever
            await deliverer.stop()
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 5

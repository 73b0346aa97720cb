"""`Idempotency-Key` on v1 and v2 POSTs (gateway/idempotency.py), on both stores: the same key
and body answer as the first did and charge once; another body is a 422 naming the key; v1
while the first runs is a 409; two concurrent submits with one key get one request id; keys
are per API key; a failed first request gives its key up; two Gateway apps on one Redis share
the keys."""

from __future__ import annotations

import concurrent.futures

import redis
from fastapi.testclient import TestClient

from tests.support.api_key_helpers import (
    SD15,
    SD15_DEFAULT_COST,
    HeldRunner,
    entry,
    headers,
    make_client,
    sd15_body,
    status_of,
    write_keys,
)
from tests.support.helpers import RecordingRunner, assert_error, wait_until


def with_key(name: str, key: str) -> dict[str, str]:
    return {**headers(name), "Idempotency-Key": key}


def spent(client: TestClient, request_id: str, name: str = "team-a") -> int:
    answer = client.get(f"/v2/requests/{request_id}", headers=headers(name))
    return 1000 - int(answer.headers["x-remaining-credits"])


def test_v2_same_key_same_body_answers_the_same_request_id_charged_once(backend, tmp_path):
    recorder = RecordingRunner()
    keys = write_keys(tmp_path, entry("team-a", credits=1000))
    with make_client(keys, {SD15: recorder}, **backend) as client:
        body = sd15_body(seed=5)
        first = client.post(f"/v2/{SD15}", json=body, headers=with_key("team-a", "order-1"))
        again = client.post(f"/v2/{SD15}", json=body, headers=with_key("team-a", "order-1"))
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()
        assert again.headers["x-remaining-credits"] == first.headers["x-remaining-credits"]
        request_id = first.json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "COMPLETED", 10)
        # Still the first answer after the job finished; nothing run or charged again.
        third = client.post(f"/v2/{SD15}", json=body, headers=with_key("team-a", "order-1"))
        assert third.json()["request_id"] == request_id
        assert spent(client, request_id) == SD15_DEFAULT_COST
    assert len(recorder.jobs) == 1


def test_same_key_other_body_is_422_naming_the_key(backend, tmp_path):
    keys = write_keys(tmp_path, entry("team-a"))
    with make_client(keys, **backend) as client:
        for route in (f"/v2/{SD15}", f"/v1/{SD15}"):
            key = with_key("team-a", f"k-{route[2]}")
            assert client.post(route, json=sd15_body(seed=1), headers=key).status_code == 200
            other = client.post(route, json=sd15_body(seed=2), headers=key)
            assert f"k-{route[2]}" in assert_error(other, 422)["error"]
        # The same key on another route is another request too.
        moved = client.post(
            f"/v1/{SD15}", json=sd15_body(seed=1), headers=with_key("team-a", "k-2")
        )
        assert_error(moved, 422)


def test_v1_replays_the_stored_image_and_409_while_the_first_runs(backend, tmp_path):
    runner = HeldRunner()
    keys = write_keys(tmp_path, entry("team-a", credits=1000))
    with make_client(keys, {SD15: runner}, **backend) as client:
        key = with_key("team-a", "v1-once")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, f"/v1/{SD15}", json=sd15_body(), headers=key)
            assert runner.started.wait(10)
            running = client.post(f"/v1/{SD15}", json=sd15_body(), headers=key)
            assert "still running" in assert_error(running, 409)["error"]
            runner.release.set()
            first = first.result()
        assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
        again = client.post(f"/v1/{SD15}", json=sd15_body(), headers=key)
        assert again.status_code == 200 and again.content == first.content
        assert again.headers["x-seed"] == first.headers["x-seed"]
        assert again.headers["x-remaining-credits"] == str(1000 - SD15_DEFAULT_COST)
        assert again.headers["content-type"] == "image/jpeg"
    assert len(runner.jobs) == 1  # run and charged once


def test_two_concurrent_submits_with_one_key_get_one_request_id(backend, tmp_path):
    recorder = RecordingRunner()
    keys = write_keys(tmp_path, entry("team-a", credits=1000))
    with make_client(keys, {SD15: recorder}, **backend) as client:

        def send(_: int):
            key = with_key("team-a", "racing")
            return client.post(f"/v2/{SD15}", json=sd15_body(), headers=key)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(send, range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        [request_id] = {a.json()["request_id"] for a in answers}
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "COMPLETED", 10)
        assert spent(client, request_id) == SD15_DEFAULT_COST
    assert len(recorder.jobs) == 1


def test_keys_are_per_api_key_and_a_failed_first_request_gives_its_key_up(backend, tmp_path):
    keys = write_keys(tmp_path, entry("team-a", credits=1000), entry("team-b", credits=10))
    with make_client(keys, **backend) as client:
        a = client.post(f"/v2/{SD15}", json=sd15_body(), headers=with_key("team-a", "same"))
        # team-b's "same" is its own: refused for its credits (406), not team-a's answer...
        b = client.post(f"/v2/{SD15}", json=sd15_body(), headers=with_key("team-b", "same"))
        assert_error(b, 406)
        # ...and that failure gave the key up: with another body it is simply a new request.
        cheap = sd15_body(num_inference_steps=20, samples=1)
        b = client.post(
            f"/v2/{SD15}", json={**cheap, "seed": 3}, headers=with_key("team-b", "same")
        )
        assert_error(b, 406)
        assert a.status_code == 200
        assert_error(
            client.post(f"/v2/{SD15}", json=sd15_body(), headers=with_key("team-a", " ")), 400
        )


def test_two_gateways_on_one_redis_share_the_keys(redis_url, tmp_path):
    redis.Redis.from_url(redis_url).flushall()
    keys = write_keys(tmp_path, entry("team-a", credits=1000))
    overrides = {"job_store_url": redis_url}
    with make_client(keys, **overrides) as first, make_client(keys, **overrides) as second:
        key = with_key("team-a", "across")
        one = first.post(f"/v2/{SD15}", json=sd15_body(), headers=key)
        two = second.post(f"/v2/{SD15}", json=sd15_body(), headers=key)
        assert one.status_code == two.status_code == 200
        assert one.json()["request_id"] == two.json()["request_id"]

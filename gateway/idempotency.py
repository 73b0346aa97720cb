"""`Idempotency-Key` on the generation POSTs (v1 and v2), as the IETF draft and Stripe take it:
a client that retries a request it got no answer to (a timeout, a dropped connection) gets the
first one's answer again, charged once.

Per API key (the tenant) and key, within `DEPTHID_IDEMPOTENCY_RETENTION_S`:
- the first request *claims* the key with its fingerprint (route and body, byte for byte);
- once it answers 2xx, that answer is stored: the same key and fingerprint get it again (v2: the
  same `request_id`; v1: the same image), nothing charged, nothing run;
- while it runs, the same key answers 409 (v2 waits a little for the first's answer first: a
  submit takes a moment, so two concurrent submits both get the one `request_id`);
- the same key with another fingerprint is a 422 naming the key;
- a first request that fails (4xx, 5xx, the caller gone) gives the key up, so a retry runs anew.

The claims live where the jobs do (memory, or the Redis of `DEPTHID_JOB_STORE_URL`), so they
hold across Gateway replicas. A claim whose Gateway died while it ran expires after its
`pending_ttl_s`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from fastapi import Request
from fastapi.responses import Response

from gateway.http.errors import ApiError
from gateway.redis_client import connect
from gateway.tenancy.api_keys import Tenant
from settings import Settings

HEADER = "Idempotency-Key"
# 1..255 visible ASCII characters: safe to name in an error and a log line.
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
PREFIX = "depthid:idempotency:"
WAIT_POLL_S = 0.05
# Hashing a body of megabytes takes a few ms: off the event loop above this.
THREAD_HASH_BYTES = 64 * 1024
# Answer headers not replayed as stored: the server sets them anew.
_NOT_REPLAYED = {"content-length", "date", "server"}

State = Literal["claimed", "pending", "done", "mismatch"]


@dataclass
class StoredAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers)


class IdempotencyStore(Protocol):
    async def claim(
        self, scope: str, fingerprint: str, pending_ttl_s: float
    ) -> tuple[State, StoredAnswer | None]:
        """Claim `scope` for `fingerprint` ("claimed"), or say what holds it: the same
        fingerprint still running ("pending") or answered ("done", with the answer), or another
        fingerprint ("mismatch")."""

    async def finish(self, scope: str, answer: StoredAnswer, ttl_s: float) -> None:
        """Store the claimed request's answer for `ttl_s`."""

    async def release(self, scope: str) -> None:
        """Give up a claim whose request did not succeed."""

    async def close(self) -> None: ...


@dataclass
class _Entry:
    fingerprint: str
    expires_at: float
    answer: StoredAnswer | None = None


class MemoryIdempotencyStore:
    """One process: claims are atomic on the event loop (no await between check and set)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def claim(
        self, scope: str, fingerprint: str, pending_ttl_s: float
    ) -> tuple[State, StoredAnswer | None]:
        now = time.monotonic()
        for expired in [s for s, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[expired]
        entry = self._entries.get(scope)
        if entry is None:
            self._entries[scope] = _Entry(fingerprint, now + pending_ttl_s)
            return "claimed", None
        return _state_of(entry.fingerprint, fingerprint, entry.answer), entry.answer

    async def finish(self, scope: str, answer: StoredAnswer, ttl_s: float) -> None:
        entry = self._entries.get(scope)
        if entry is not None:
            entry.answer = answer
            entry.expires_at = time.monotonic() + ttl_s

    async def release(self, scope: str) -> None:
        entry = self._entries.get(scope)
        if entry is not None and entry.answer is None:
            del self._entries[scope]

    async def close(self) -> None:
        return None


# KEYS[1]: the claim's hash. ARGV: fingerprint, pending ttl (ms). Claims it when free, else
# answers what holds it.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed'}
end
return redis.call('HMGET', KEYS[1], 'fingerprint', 'status', 'headers', 'body')
"""

# Give a claim up only while it holds no answer.
_RELEASE = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisIdempotencyStore:
    """Shared by every replica on one Redis."""

    def __init__(self, url: str, retry_s: float) -> None:
        self.client = connect(url, retry_s)
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)

    async def claim(
        self, scope: str, fingerprint: str, pending_ttl_s: float
    ) -> tuple[State, StoredAnswer | None]:
        found = await self._claim(
            keys=[PREFIX + scope], args=[fingerprint, int(pending_ttl_s * 1000)]
        )
        if found == [b"claimed"]:
            return "claimed", None
        stored, status, headers, body = found
        answer = None
        if status is not None:
            answer = StoredAnswer(int(status), json.loads(headers), body or b"")
        return _state_of(stored.decode(), fingerprint, answer), answer

    async def finish(self, scope: str, answer: StoredAnswer, ttl_s: float) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                PREFIX + scope,
                mapping={
                    "status": answer.status,
                    "headers": json.dumps(answer.headers),
                    "body": answer.body,
                },
            )
            pipe.pexpire(PREFIX + scope, int(ttl_s * 1000))
            await pipe.execute()

    async def release(self, scope: str) -> None:
        await self._release(keys=[PREFIX + scope])

    async def close(self) -> None:
        await self.client.aclose()


def _state_of(stored: str, fingerprint: str, answer: StoredAnswer | None) -> State:
    if stored != fingerprint:
        return "mismatch"
    return "done" if answer is not None else "pending"


def make_idempotency_store(settings: Settings) -> IdempotencyStore:
    if settings.job_store_url:
        return RedisIdempotencyStore(settings.job_store_url, settings.redis_retry_s)
    return MemoryIdempotencyStore()


class Claim:
    """A request that holds its key: `finish` stores its answer, `release` gives the key up."""

    def __init__(self, idempotency: Idempotency, scope: str) -> None:
        self._idempotency = idempotency
        self._scope = scope

    async def finish(self, response: Response) -> None:
        if not 200 <= response.status_code < 300:
            await self.release()
            return
        headers = {k: v for k, v in response.headers.items() if k not in _NOT_REPLAYED}
        answer = StoredAnswer(response.status_code, headers, bytes(response.body))
        await self._idempotency.store.finish(self._scope, answer, self._idempotency.retention_s)

    async def release(self) -> None:
        await self._idempotency.store.release(self._scope)


async def answer_once(claim: Claim | None, produce: Callable[[], Awaitable[Response]]) -> Response:
    """`produce()` the answer of a request that holds its key (or has none): stored for a
    replay when it succeeds, the key given up when it fails or is cancelled."""
    try:
        response = await produce()
    except BaseException:
        if claim is not None:
            await asyncio.shield(claim.release())
        raise
    if claim is not None:
        await claim.finish(response)
    return response


class Idempotency:
    def __init__(self, store: IdempotencyStore, settings: Settings) -> None:
        self.store = store
        self.retention_s = settings.idempotency_retention_s

    async def begin(
        self, request: Request, tenant: Tenant, *, pending_ttl_s: float, wait_s: float = 0.0
    ) -> Claim | Response | None:
        """None: no `Idempotency-Key`, go on as usual. A Response: the first request's answer,
        to send again as it is. A Claim: this request is the first; go on, then `finish` (or
        `release` when it fails). 409 while the first still runs (after `wait_s`), 422 when
        the key came with another request, 400 for a malformed key."""
        key = request.headers.get(HEADER)
        if key is None:
            return None
        if not KEY_PATTERN.fullmatch(key):
            raise ApiError(400, f"{HEADER} must be 1 to 255 visible ASCII characters")
        scope = f"{tenant.name}:{hashlib.sha256(key.encode()).hexdigest()}"
        fingerprint = await _fingerprint(request)
        give_up_at = time.monotonic() + wait_s
        while True:
            state, answer = await self.store.claim(scope, fingerprint, pending_ttl_s)
            if state == "claimed":
                return Claim(self, scope)
            if state == "done" and answer is not None:
                return answer.response()
            if state == "mismatch":
                raise ApiError(
                    422,
                    f"{HEADER} '{key}' was already used with a different request (another "
                    "model or body); send a new key for a new request",
                )
            if time.monotonic() >= give_up_at:
                raise ApiError(
                    409,
                    f"the request with {HEADER} '{key}' is still running; retry later for "
                    "its answer",
                )
            await asyncio.sleep(WAIT_POLL_S)


async def _fingerprint(request: Request) -> str:
    """The route and the body, byte for byte."""
    body = await request.body()
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    if len(body) > THREAD_HASH_BYTES:
        await asyncio.to_thread(digest.update, body)
    else:
        digest.update(body)
    return digest.hexdigest()

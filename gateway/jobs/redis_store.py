"""The v2 job store on Redis, shared by any number of Gateway replicas.

Keys (all under `depthid:`):
  queue          list of waiting job ids (pushed left, taken from the right: FIFO)
  processing     list of ids taken by some worker
  job:<id>       hash: the job's fields (see JobRecord); its inputs (`payload`, the runner job
                 with its images, megabytes) in a field of their own, deleted when it finishes
  lease:<id>     the owning worker's id, expiring after the visibility timeout unless renewed
  img:<id>:<t>:<n>  image n of the attempt `t` that completed the job
  webhooks       sorted set of due webhook deliveries, "<id>|<event>" -> due time (epoch s);
                 a taken one is leased by pushing its time past the lease
  webhook-attempts:<id>  list of the job's delivery attempts (JSON), expiring with the job

The scripts touch keys derived from the job id, so this targets a single Redis (or a cluster
with every key in one hash slot), not a sharded cluster.

A worker that dies stops renewing its lease; `requeue_expired` puts its job back in the queue
and another worker takes it. Results are written by a script that refuses a job that is
already terminal, so a late duplicate from a worker presumed dead never overwrites a result.
"""

from __future__ import annotations

import asyncio
import json
import time

from gateway.jobs.store import (
    MAX_WEBHOOK_ATTEMPTS_KEPT,
    WEBHOOK_EVENTS,
    JobRecord,
    QueueFull,
    Status,
    delivery_member,
)
from gateway.redis_client import connect
from settings import DEFAULT_REDIS_RETRY_S

PREFIX = "depthid:"
QUEUE = PREFIX + "queue"
PROCESSING = PREFIX + "processing"

WEBHOOKS = PREFIX + "webhooks"

# Schedules the delivery of a terminal event (the status, lower case) in the same script as the
# terminal write, when the job asked for it: a Gateway that dies right after the write leaves
# the delivery due, for any replica to make.
_SCHEDULE_WEBHOOK = """
local function schedule_webhook(job_key, webhooks, id, event, now)
  local record = cjson.decode(redis.call('HGET', job_key, 'record'))
  if type(record['webhook']) ~= 'string' then return end
  for _, wanted in ipairs(record['webhook_events']) do
    if wanted == event then
      redis.call('ZADD', webhooks, now, id .. '|' .. event)
      redis.call('HSET', job_key, 'webhook:' .. event, 'pending')
    end
  end
end
"""

# Atomic bound check + enqueue.
_SUBMIT = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'record', ARGV[3], 'payload', ARGV[4], 'status', 'QUEUED',
           'attempts', 0)
redis.call('LPUSH', KEYS[1], ARGV[2])
return 1
"""

# Atomic take: move the oldest id to `processing`, lease it, mark it PROCESSING. An id whose job
# is already terminal or gone is dropped instead ('skip').
_TAKE = """
local id = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
if not id then return false end
local status = redis.call('HGET', ARGV[4] .. id, 'status')
if (not status) or status == 'COMPLETED' or status == 'FAILED' or status == 'CANCELLED' then
  -- Finished (by a worker presumed dead), cancelled or expired meanwhile: never run it again.
  redis.call('LREM', KEYS[2], 0, id)
  return 'skip'
end
redis.call('SET', ARGV[3] .. id, ARGV[1], 'PX', ARGV[2])
redis.call('HSET', ARGV[4] .. id, 'status', 'PROCESSING', 'started_at', ARGV[5])
local attempts = redis.call('HINCRBY', ARGV[4] .. id, 'attempts', 1)
-- Everything the worker needs, in the same answer: a second read could fail (Redis gone right
-- after the take) and leave the job taken by nobody until its lease lapsed, one attempt spent.
local fields = redis.call('HMGET', ARGV[4] .. id, 'record', 'payload')
return {id, fields[1], fields[2] or '', attempts}
"""

# Renew only one's own lease.
_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if owner then return 0 end
-- The lease lapsed under a live worker (Redis was unreachable longer than the visibility
-- timeout): take it back while the job is still taken, i.e. not requeued or finished meanwhile.
if redis.call('HGET', KEYS[2], 'status') == 'PROCESSING'
   and redis.call('LPOS', KEYS[3], ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Write the terminal state once: a job already COMPLETED or FAILED is left as it is. A finished
# job keeps only its result: its inputs go.
_FINISH = (
    _SCHEDULE_WEBHOOK
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'COMPLETED' or status == 'FAILED' or status == 'CANCELLED' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'result', ARGV[3], 'finished_at', ARGV[4],
           'n_images', ARGV[6], 'images_token', ARGV[7], 'error', ARGV[8])
redis.call('HDEL', KEYS[1], 'payload')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('LREM', KEYS[4], 0, ARGV[1])  -- requeued meanwhile: it must not run again
redis.call('DEL', KEYS[3])
schedule_webhook(KEYS[1], KEYS[5], ARGV[1], string.lower(ARGV[2]), ARGV[4])
return 1
"""
)

# Cancel a job not yet terminal: the terminal write of _FINISH (once), answering the status
# the job had before ('' when unknown); a terminal job answers its status, untouched.
_CANCEL = (
    _SCHEDULE_WEBHOOK
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'CANCELLED' then
  return {0, status}
end
redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'result', ARGV[2], 'finished_at', ARGV[3],
           'n_images', 0, 'error', '')
redis.call('HDEL', KEYS[1], 'payload')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('LREM', KEYS[4], 0, ARGV[1])
redis.call('DEL', KEYS[3])
schedule_webhook(KEYS[1], KEYS[5], ARGV[1], 'cancelled', ARGV[3])
return {1, status}
"""
)

# Take the most overdue delivery and lease it: its due time moves past the lease.
_TAKE_DELIVERY = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], ARGV[2], due[1])
return due[1]
"""

# Schedule a delivery (ARGV: member, due, event) of a job that still exists.
_ENQUEUE_DELIVERY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook:' .. ARGV[3], 'pending')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# Record an attempt (ARGV: member, event, attempt JSON, state, retry at or '', kept, ttl s):
# on the job while it exists; the delivery due again at `retry at`, else done with.
_RECORD_DELIVERY = """
if ARGV[5] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook:' .. ARGV[2], ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
redis.call('EXPIRE', KEYS[3], ARGV[7])
return 1
"""

# Hand back a job this worker holds: first in line again.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('LREM', KEYS[2], 0, ARGV[2]) > 0 then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('HSET', KEYS[4], 'status', 'QUEUED')
  if ARGV[3] == '0' then redis.call('HINCRBY', KEYS[4], 'attempts', -1) end
end
return 1
"""

# Requeue a taken job whose lease is gone (its worker stopped renewing: it died).
_REQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('LREM', KEYS[2], 0, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], 'status', 'QUEUED')
return 1
"""

# Waiting jobs per model: one pass over the queue (bounded by DEPTHID_JOB_QUEUE_MAX), each job's
# model read from its `record`. Returns [model, count, model, count, ...].
_DEPTH_BY_MODEL = """
local counts = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('HGET', ARGV[1] .. id, 'record')
  if record then
    local model = cjson.decode(record)['model']
    counts[model] = (counts[model] or 0) + 1
  end
end
local flat = {}
for model, count in pairs(counts) do
  table.insert(flat, model)
  table.insert(flat, count)
end
return flat
"""

# The fields fixed at submit time, stored together as JSON in the hash's `record` field. The
# payload has a field of its own: it is read only by the worker that takes the job, never by
# status polls, and deleted when the job finishes.
_STATIC_FIELDS = (
    "id", "model", "as_base64", "media_type", "base_url", "submitted_at", "owner",
    "credits_charged", "webhook", "webhook_events",
)  # fmt: skip


# Every field of the job hash but the payload: what a status or result poll reads.
_STATE_FIELDS = (
    "record", "status", "attempts", "started_at", "finished_at", "error", "result", "n_images",
    *(f"webhook:{event}" for event in WEBHOOK_EVENTS),
)  # fmt: skip


def _taken_record(taken: list, started_at: float) -> JobRecord:
    """The JobRecord of what _TAKE answers: [id, record JSON, payload, attempts]."""
    _, static, payload, attempts = taken
    fields = json.loads(static)
    fields.pop("payload", None)  # a job submitted before inputs had their own field
    record = JobRecord(**fields, payload=payload.decode() or json.loads(static).get("payload", ""))
    record.status = "PROCESSING"
    record.started_at = started_at
    record.attempts = int(attempts)
    return record


def _job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def _lease_key(job_id: str) -> str:
    return f"{PREFIX}lease:{job_id}"


def _webhook_attempts_key(job_id: str) -> str:
    return f"{PREFIX}webhook-attempts:{job_id}"


def _image_key(job_id: str, token: str, index: int) -> str:
    return f"{PREFIX}img:{job_id}:{token}:{index}"


class RedisJobStore:
    def __init__(
        self,
        url: str,
        max_queued: int,
        retention_s: float,
        visibility_timeout_s: float,
        retry_s: float = DEFAULT_REDIS_RETRY_S,
    ) -> None:
        # Retries, health checks and socket timeouts: gateway/redis_client.py.
        self.client = connect(url, retry_s)
        self.max_queued = max_queued
        self.retention_s = int(retention_s)
        self.visibility_ms = int(visibility_timeout_s * 1000)
        self.poll_s = 0.05  # take() polls; fast enough that idle queue time stays tiny
        self._submit = self.client.register_script(_SUBMIT)
        self._take = self.client.register_script(_TAKE)
        self._renew = self.client.register_script(_RENEW)
        self._finish = self.client.register_script(_FINISH)
        self._release = self.client.register_script(_RELEASE)
        self._cancel = self.client.register_script(_CANCEL)
        self._take_delivery = self.client.register_script(_TAKE_DELIVERY)
        self._enqueue_delivery = self.client.register_script(_ENQUEUE_DELIVERY)
        self._record_delivery = self.client.register_script(_RECORD_DELIVERY)
        self._requeue = self.client.register_script(_REQUEUE)
        self._depth_by_model = self.client.register_script(_DEPTH_BY_MODEL)

    async def submit(self, record: JobRecord) -> None:
        static = json.dumps({name: getattr(record, name) for name in _STATIC_FIELDS})
        keys = [QUEUE, _job_key(record.id)]
        args = [self.max_queued, record.id, static, record.payload]
        if not await self._submit(keys=keys, args=args):
            raise QueueFull

    async def take(self, worker_id: str, timeout_s: float) -> JobRecord | None:
        deadline = time.monotonic() + timeout_s
        while True:
            started_at = time.time()
            taken = await self._take(
                keys=[QUEUE, PROCESSING],
                args=[
                    worker_id,
                    self.visibility_ms,
                    PREFIX + "lease:",
                    PREFIX + "job:",
                    started_at,
                ],
            )
            if taken == b"skip":
                continue
            if taken:
                return _taken_record(taken, started_at)
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.poll_s)

    async def renew(self, job_id: str, worker_id: str) -> bool:
        keys = [_lease_key(job_id), _job_key(job_id), PROCESSING]
        return bool(await self._renew(keys=keys, args=[worker_id, self.visibility_ms, job_id]))

    async def complete(
        self, job_id: str, worker_id: str, images: list[bytes], result: dict
    ) -> bool:
        # Images go under this attempt's own keys first; the script then points the job at
        # them only if it is not terminal yet, so a losing duplicate's images are never served.
        async with self.client.pipeline(transaction=False) as pipe:
            for index, image in enumerate(images):
                pipe.set(_image_key(job_id, worker_id, index), image, ex=self.retention_s)
            await pipe.execute()
        return await self._finish_job(job_id, "COMPLETED", result, len(images), worker_id, "")

    async def fail(self, job_id: str, worker_id: str, error: str, result: dict) -> bool:
        return await self._finish_job(job_id, "FAILED", result, 0, worker_id, error)

    async def _finish_job(
        self, job_id: str, status: str, result: dict, n_images: int, token: str, error: str
    ) -> bool:
        keys = [_job_key(job_id), PROCESSING, _lease_key(job_id), QUEUE, WEBHOOKS]
        args = [
            job_id, status, json.dumps(result), time.time(), self.retention_s, n_images, token,
            error,
        ]  # fmt: skip
        return bool(await self._finish(keys=keys, args=args))

    async def cancel(self, job_id: str) -> tuple[bool, Status | None]:
        keys = [_job_key(job_id), PROCESSING, _lease_key(job_id), QUEUE, WEBHOOKS]
        body = json.dumps({"request_id": job_id, "status": "CANCELLED"})
        done, status = await self._cancel(
            keys=keys, args=[job_id, body, time.time(), self.retention_s]
        )
        return bool(done), (status.decode() or None)  # type: ignore[return-value]

    async def status(self, job_id: str) -> Status | None:
        status = await self.client.hget(_job_key(job_id), "status")
        return status.decode() if status else None  # type: ignore[return-value]

    async def release(self, job_id: str, worker_id: str, ran: bool = True) -> None:
        keys = [_lease_key(job_id), PROCESSING, QUEUE, _job_key(job_id)]
        await self._release(keys=keys, args=[worker_id, job_id, "1" if ran else "0"])

    async def requeue_expired(self) -> int:
        # Taking sets the lease in the same script, so a taken id without a lease has been
        # abandoned: its worker stopped renewing. The script re-checks atomically.
        requeued = 0
        for raw in await self.client.lrange(PROCESSING, 0, -1):
            job_id = raw.decode()
            keys = [_lease_key(job_id), PROCESSING, QUEUE, _job_key(job_id)]
            requeued += await self._requeue(keys=keys, args=[job_id])
        return requeued

    async def get(self, job_id: str) -> JobRecord | None:
        """The job without its inputs (`payload` is empty): what the routes answer from."""
        fields = await self.client.hmget(_job_key(job_id), _STATE_FIELDS)
        value = {k: v.decode() for k, v in zip(_STATE_FIELDS, fields, strict=True) if v is not None}
        if "record" not in value:
            return None
        static = json.loads(value["record"])
        # A job submitted before inputs had their own field holds them in `record`.
        record = JobRecord(**static) if "payload" in static else JobRecord(**static, payload="")
        record.status = value["status"]  # type: ignore[assignment]
        record.attempts = int(value.get("attempts", 0))
        record.started_at = float(value["started_at"]) if "started_at" in value else None
        record.finished_at = float(value["finished_at"]) if "finished_at" in value else None
        record.error = value.get("error") or None
        record.result = json.loads(value["result"]) if "result" in value else None
        record.n_images = int(value.get("n_images", 0))
        record.webhook_deliveries = {
            event: value[f"webhook:{event}"]
            for event in WEBHOOK_EVENTS
            if f"webhook:{event}" in value
        }
        if record.webhook:
            attempts = await self.client.lrange(_webhook_attempts_key(job_id), 0, -1)
            record.webhook_attempts = [json.loads(attempt) for attempt in attempts]
        return record

    async def enqueue_delivery(self, job_id: str, event: str) -> None:
        member = delivery_member(job_id, event)
        await self._enqueue_delivery(
            keys=[_job_key(job_id), WEBHOOKS], args=[member, time.time(), event]
        )

    async def take_delivery(self, lease_s: float) -> tuple[str, str] | None:
        now = time.time()
        member = await self._take_delivery(keys=[WEBHOOKS], args=[now, now + lease_s])
        if not member:
            return None
        job_id, event = member.decode().split("|")
        return job_id, event

    async def record_delivery(
        self, job_id: str, event: str, attempt: dict, state: str, retry_at: float | None
    ) -> None:
        keys = [_job_key(job_id), WEBHOOKS, _webhook_attempts_key(job_id)]
        args = [
            delivery_member(job_id, event), event, json.dumps(attempt), state,
            "" if retry_at is None else retry_at, MAX_WEBHOOK_ATTEMPTS_KEPT, self.retention_s,
        ]  # fmt: skip
        await self._record_delivery(keys=keys, args=args)

    async def get_image(self, job_id: str, index: int) -> bytes | None:
        fields = await self.client.hmget(_job_key(job_id), ["status", "images_token", "n_images"])
        status, token, n_images = fields
        if status != b"COMPLETED" or not 0 <= index < int(n_images or 0):
            return None
        return await self.client.get(_image_key(job_id, token.decode(), index))

    async def queue_depth(self) -> int:
        return await self.client.llen(QUEUE)

    async def queue_depth_by_model(self) -> dict[str, int]:
        flat = await self._depth_by_model(keys=[QUEUE], args=[PREFIX + "job:"])
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def close(self) -> None:
        await self.client.aclose()

"""Work nobody waits for is not done (runners/deadlines.py, runners/batching.py,
gateway/runner_client.py, gateway/v1.py): a job past its deadline or cancelled is not
started; a pipeline call whose every job is abandoned stops at its next denoising step, on
every runner's real (tiny) pipeline; the Gateway stamps deadlines, cancels in the runner,
and refunds a v1 caller who went away."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from gateway.runner_client import RunnerClient
from runners import deadlines
from runners.batching import run_batched
from tests.support.api_key_helpers import (
    SD15,
    HeldRunner,
    entry,
    headers,
    make_client,
    sd15_body,
    write_keys,
)
from tests.support.jobs import flux_job, instantid_job, sd15_job

# --- not started -----------------------------------------------------------------------------


def test_jobs_past_their_deadline_or_cancelled_are_not_run():
    ran: list[str] = []

    def run_call(jobs):
        ran.extend(job.request_id for job in jobs)
        return [deadlines.expired_result(job).model_copy(update={"failure": None}) for job in jobs]

    deadlines.cancel(["gone-token"])
    jobs = [
        sd15_job(request_id="live", deadline=time.time() + 60, token="a"),
        sd15_job(request_id="late", deadline=time.time() - 0.001, token="b"),
        sd15_job(request_id="gone", deadline=time.time() + 60, token="gone-token"),
        sd15_job(request_id="no-deadline"),
    ]
    results = run_batched(jobs, lambda job: "same call", run_call, max_batch_size=8)
    assert ran == ["live", "no-deadline"]
    assert [r.request_id for r in results] == ["live", "late", "gone", "no-deadline"]
    assert [r.failure.kind if r.failure else None for r in results] == [
        None, "expired", "expired", None,
    ]  # fmt: skip


# --- stopped at the next step, on every runner ------------------------------------------------


@pytest.fixture(scope="module")
def runner_pipelines(tiny_settings):
    from runners.flux_pipeline import FluxDepthPipeline
    from runners.instantid_pipeline import InstantIDPipelines
    from runners.sd15_pipeline import SD15DepthPipelines

    sd15 = SD15DepthPipelines.from_store(tiny_settings)
    flux = FluxDepthPipeline.from_store(tiny_settings)
    instantid = InstantIDPipelines.from_store(tiny_settings)
    return {
        "sd15": (sd15, lambda p: p.components["unet"], sd15_job),
        "flux": (flux, lambda p: p.pipe.transformer, flux_job),
        "instantid": (instantid, lambda p: p.components["unet"], instantid_job),
    }


STEPS = 12


def steps_field(make_job) -> str:
    return "steps" if make_job is flux_job else "num_inference_steps"


@pytest.mark.parametrize("runner", ["sd15", "flux", "instantid"])
def test_a_call_whose_jobs_are_all_abandoned_stops_at_the_next_step(runner_pipelines, runner):
    pipelines, denoiser_of, make_job = runner_pipelines[runner]
    job = make_job(**{steps_field(make_job): STEPS}, deadline=time.time() + 600, token=runner)
    forwards = []

    def cancel_on_first_step(*_args):
        forwards.append(1)
        deadlines.cancel([runner])  # the caller goes away during the first step

    hook = denoiser_of(pipelines).register_forward_hook(cancel_on_first_step)
    try:
        [result] = pipelines.run_batch([job])
    finally:
        hook.remove()
    assert result.failure is not None and result.failure.kind == "expired"
    assert result.images == []
    assert len(forwards) == 1  # of STEPS: stopped right after the step in which it was cancelled


def test_a_call_with_one_live_job_goes_on(runner_pipelines):
    pipelines, denoiser_of, _ = runner_pipelines["sd15"]
    gone = sd15_job(request_id="gone", num_inference_steps=STEPS, token="gone-2", seed=1)
    live = sd15_job(request_id="live", num_inference_steps=STEPS, token="live-2", seed=2)
    forwards = []

    def cancel_one(*_args):
        forwards.append(1)
        deadlines.cancel(["gone-2"])

    hook = denoiser_of(pipelines).register_forward_hook(cancel_one)
    try:
        results = pipelines.run_batch([gone, live])
    finally:
        hook.remove()
    assert len(forwards) == STEPS  # both rows in one call, run to the end for the live one
    assert [len(r.images) for r in results] == [1, 1]


# --- the Gateway's side -----------------------------------------------------------------------


def test_runner_client_stamps_the_deadline_and_cancels_in_the_runner_when_it_passes():
    seen, cancelled = [], []

    async def slow(jobs):
        seen.extend(jobs)
        await asyncio.sleep(5)

    async def cancel(tokens):
        cancelled.extend(tokens)

    async def scenario():
        client = RunnerClient("sd15", slow, deadline_s=0.3, cancel=cancel)
        started = time.time()
        with pytest.raises(Exception) as raised:
            await client.generate([sd15_job(samples=2)], model=SD15)
        assert getattr(raised.value, "status", None) == 504
        assert time.time() - started < 2  # answered at the deadline, not when the runner is
        await asyncio.sleep(0.05)  # the cancel is sent without waiting for it
        return started

    started = asyncio.run(scenario())
    [job] = seen  # the whole job (the runner cuts it into samples, each with its token)
    assert job.samples == 2 and job.token
    assert abs(seen[0].deadline - (started + 0.3)) < 0.5
    assert cancelled == [seen[0].token]


def test_a_v1_caller_who_goes_away_is_refunded_and_the_runner_told(tmp_path):
    """Driven through the ASGI app with a client that disconnects mid-generation (a test
    client cannot): the charge comes back, the slot is freed, the runner gets the cancel."""
    runner = HeldRunner()  # never answers by itself
    cancelled: list[str] = []
    keys = write_keys(tmp_path, entry("team-a", credits=100, concurrent_jobs=1))
    client = make_client(keys, {SD15: runner})
    app = client.app

    async def cancel(tokens):
        cancelled.extend(tokens)

    app.state.serving.runners[SD15]._cancel = cancel

    async def scenario() -> list[dict]:
        body = json.dumps(sd15_body()).encode()
        gone = asyncio.Event()
        sent: list[dict] = []
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": f"/v1/{SD15}", "raw_path": f"/v1/{SD15}".encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *[(k.encode(), v.encode()) for k, v in headers("team-a").items()]],
        }  # fmt: skip
        request = asyncio.create_task(app(scope, receive, send))
        await asyncio.to_thread(runner.started.wait, 10)
        gone.set()  # the caller hangs up while its image is being generated
        await asyncio.wait_for(request, 10)
        await asyncio.sleep(0.05)
        spent = await app.state.credits.ledger.spent("team-a")
        slots = app.state.rate_limits.store._slots.get("team-a", {})
        return sent, spent, slots

    sent, spent, slots = asyncio.run(scenario())
    assert runner.started.is_set()
    assert spent == 0 and not slots
    assert len(cancelled) == 1 and cancelled[0]
    assert sent[0]["status"] == 499
    threading.Thread(target=runner.release.set).start()


def test_after_a_transport_failure_calls_answer_502_at_once_until_the_runner_is_ready():
    """A runner that died is restarting: rather than queue on its socket until it is back,
    calls ask its readiness first and answer 502 at once; once it is ready they go through."""
    import aiohttp

    calls, ready = [], [False]

    async def call(jobs):
        calls.append(jobs)
        if len(calls) == 1:
            raise aiohttp.ClientConnectionError("connection reset")
        return [deadlines.expired_result(job) for job in jobs]

    async def is_ready():
        return ready[0]

    async def scenario():
        client = RunnerClient("sd15", call, deadline_s=30, ready=is_ready)
        for _ in range(2):  # the failure itself, then a refusal without a call
            with pytest.raises(Exception) as raised:
                await client.generate([sd15_job()], model=SD15)
            assert getattr(raised.value, "status", None) == 502
        assert len(calls) == 1
        ready[0] = True
        await client.generate([sd15_job()], model=SD15)
        assert len(calls) == 2

    asyncio.run(scenario())

"""A queued sample's own input work (face analysis, depth maps) starts when it is queued and
runs beside the call before it (runners/preparation.py); the call takes the result."""

from __future__ import annotations

import threading

import pytest

from runners.preparation import Preparations
from tests.support.jobs import instantid_job, sd15_job


class Source:
    """An input image stand-in: only its identity matters."""


def test_a_started_result_is_taken_once_and_a_missing_one_computed_then():
    preparations = Preparations("test", capacity=8)
    image, other = Source(), Source()
    computed: list[str] = []
    preparations.start(image, "depth", lambda: computed.append("started") or "map")
    assert preparations.take(image, "depth", lambda: "recomputed") == "map"
    assert computed == ["started"]
    # Taken: the next take (another call) computes; so does one for work never started.
    assert preparations.take(image, "depth", lambda: "recomputed") == "recomputed"
    assert preparations.take(other, "depth", lambda: "fresh") == "fresh"


def test_starting_the_same_work_twice_runs_it_once_and_old_entries_make_way():
    preparations = Preparations("test", capacity=2)
    runs: list[int] = []
    shared = Source()
    for _ in range(3):  # three samples of one request share its image
        preparations.start(shared, "face", lambda: runs.append(1))
    sources = [Source() for _ in range(3)]
    for index, source in enumerate(sources):
        preparations.start(source, "face", lambda index=index: index)
    assert preparations.take(shared, "face", lambda: "pushed out") == "pushed out"
    assert len(runs) == 1
    assert preparations.take(sources[2], "face", lambda: "missing") == 2


def test_a_failure_in_the_preparation_raises_in_the_call():
    preparations = Preparations("test", capacity=4)
    image = Source()

    def broken() -> None:
        raise ValueError("undecodable")

    preparations.start(image, "depth", broken)
    with pytest.raises(ValueError, match="undecodable"):
        preparations.take(image, "depth", lambda: "never")


def analysed_in(pipelines, method: str) -> list[str]:
    """Names of the threads that run `pipelines.<method>` from now on."""
    threads: list[str] = []
    original = getattr(pipelines, method)

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    return threads, recording


def test_instantid_analyses_a_prepared_samples_faces_outside_its_call(instantid, monkeypatch):
    threads, recording = analysed_in(instantid.faces, "largest_face")
    monkeypatch.setattr(instantid.faces, "largest_face", recording)
    rows = [instantid_job(seed=1), instantid_job(seed=2, prompt="photo of a woman")]
    for row in rows:
        instantid.prepare(row)
    prepared = instantid.run_call(rows)
    assert threads and all(name.startswith("instantid-prep") for name in threads)
    unprepared = instantid.run_batch(rows)  # the same call, faces analysed in it
    assert [r.images for r in prepared] == [r.images for r in unprepared]


def test_sd15_estimates_a_prepared_samples_depth_outside_its_call(sd15, monkeypatch):
    threads, recording = analysed_in(sd15, "depth")
    monkeypatch.setattr(sd15, "depth", recording)
    rows = [sd15_job(seed=1, num_inference_steps=4), sd15_job(seed=2, num_inference_steps=4)]
    for row in rows:
        sd15.prepare(row)
    prepared = sd15.run_call(rows)
    assert len(threads) == 2 and all(name.startswith("sd15_depth-prep") for name in threads)
    assert [r.images for r in prepared] == [r.images for r in sd15.run_batch(rows)]

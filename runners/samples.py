"""A job of n samples as n one-sample jobs (sample i seeded with `seed + i`), and their results
as one again: done once, by the runner's scheduler (runners/scheduler.py), so that each sample
counts toward the batch size; the Gateway sends whole jobs."""

from __future__ import annotations

from typing import Any, TypeVar

from protocol.jobs import GenerationResult

Job = TypeVar("Job", bound=Any)


def split_samples(job: Job) -> list[Job]:
    """The one-sample jobs a job stands for (itself when it is one sample or has no samples)."""
    samples = getattr(job, "samples", 1)
    if samples == 1:
        return [job]
    return [job.model_copy(update={"samples": 1, "seed": job.seed + i}) for i in range(samples)]


def merge_results(job: Any, parts: list[GenerationResult]) -> GenerationResult:
    """The result of `job` from the results of its one-sample jobs, in sample order: a failure
    of any sample is the job's failure (samples share their inputs, so they fail alike)."""
    if len(parts) == 1:
        return parts[0]
    failed = next((part for part in parts if part.failure is not None), None)
    return GenerationResult(
        request_id=job.request_id,
        images=[] if failed else [image for part in parts for image in part.images],
        seed=job.seed,
        # Samples run side by side in one call or in consecutive ones: the longest is the
        # time the caller waited for compute.
        inference_time=max(part.inference_time for part in parts),
        failure=failed.failure if failed else None,
        prompt_used=parts[0].prompt_used,
        prompt_truncated=parts[0].prompt_truncated,
        batch_size=max(part.batch_size for part in parts),
    )


def split_jobs(jobs: list[Job]) -> list[Job]:
    """Every job's one-sample jobs, in order."""
    return [row for job in jobs for row in split_samples(job)]


def merge_jobs(jobs: list[Any], row_results: list[GenerationResult]) -> list[GenerationResult]:
    """One result per job from the results of `split_jobs(jobs)`, in the same order."""
    merged, start = [], 0
    for job in jobs:
        count = getattr(job, "samples", 1)
        merged.append(merge_results(job, row_results[start : start + count]))
        start += count
    return merged

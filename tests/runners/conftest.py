"""Fixtures of the runner tests: each runner's real pipelines on the tiny models, loaded once per
module (a module's tests share them; the next module loads its own)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sd15(tiny_settings):
    from runners.sd15_pipeline import SD15DepthPipelines

    return SD15DepthPipelines.from_store(tiny_settings)


@pytest.fixture(scope="module")
def flux(tiny_settings):
    from runners.flux_pipeline import FluxDepthPipeline

    return FluxDepthPipeline.from_store(tiny_settings)


@pytest.fixture(scope="module")
def instantid(tiny_settings):
    from runners.instantid_pipeline import InstantIDPipelines

    return InstantIDPipelines.from_store(tiny_settings)

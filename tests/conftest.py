"""Shared fixtures: the tiny models (built once, cached in the model store) and settings."""

from __future__ import annotations

import pytest

from settings import Settings


@pytest.fixture(scope="session")
def tiny_settings() -> Settings:
    """The default store with the tiny profile on CPU, its models built if missing."""
    from models.build import build_tiny

    settings = Settings(profile="tiny", device="cpu")
    build_tiny(settings)
    return settings

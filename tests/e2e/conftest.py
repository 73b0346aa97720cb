"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture(scope="module")
def http(served_url: str) -> Iterator[httpx.Client]:
    """An HTTP client on the shared served instance (tests/conftest.py)."""
    with httpx.Client(base_url=served_url, timeout=120) as client:
        yield client

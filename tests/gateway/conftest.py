"""Fixtures of the in-process gateway tests."""

from __future__ import annotations

import pytest

from tests.support.helpers import RecordingRunner


@pytest.fixture
def recorder() -> RecordingRunner:
    """The runner double behind the app of a test's `client` (tests/support/gateway_client.py)."""
    return RecordingRunner()

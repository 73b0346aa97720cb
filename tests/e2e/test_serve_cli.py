"""`depthid serve` (cli/serve.py), what `make serve` runs: the tiny profile served on the port it
is given, its logs text lines, until it is stopped as BentoML is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from settings import PROJECT_ROOT
from tests.support.helpers import free_port, is_ready, wait_until
from tests.support.served import START_TIMEOUT_S, stop

pytestmark = pytest.mark.served


def test_depthid_serve_serves_the_tiny_profile(tiny_settings, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    # What a user's shell has: none of the settings the command defaults.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DEPTHID_PROFILE", "DEPTHID_DEVICE", "DEPTHID_LOG_FORMAT", "BENTOML_HOME")
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", url.rsplit(":", 1)[1]],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(lambda: is_ready(url) or process.poll() is not None, START_TIMEOUT_S)
            assert is_ready(url), log.read_text()[-4000:]
        finally:
            stop(process)
    text = log.read_text()
    assert "sd15-base: cached" in text  # the tiny models, checked first
    assert f"DepthID is ready: {url}" in text
    assert "profile:  tiny" in text and "device:   cpu" in text
    assert '{"' not in text  # text lines, not the container's JSON

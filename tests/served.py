"""Start `bentoml serve` on 127.0.0.1 for end-to-end tests, and stop it with its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from settings import PROJECT_ROOT
from tests.helpers import free_port, is_ready, wait_until

BENTOML = str(Path(sys.executable).parent / "bentoml")
START_TIMEOUT_S = 240


@contextlib.contextmanager
def serve(
    target: str = "service:Gateway",
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait_ready: bool = True,
) -> Iterator[str]:
    """Serve `target` on a free port and yield its base URL; the log is printed on failure."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "DEPTHID_PROFILE": "tiny",
        "DEPTHID_DEVICE": "cpu",
        **(env or {}),
    }
    # Kept after the run (delete=False) so a failed start can be read afterwards.
    log = tempfile.NamedTemporaryFile(prefix="depthid-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the runner workers stop with it
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        if wait_ready and not wait_until(
            lambda: is_ready(base_url) or process.poll() is not None, START_TIMEOUT_S
        ):
            raise RuntimeError(f"{target} not ready in {START_TIMEOUT_S}s; log: {log.name}")
        if process.poll() is not None:
            raise RuntimeError(f"{target} exited: {Path(log.name).read_text()[-4000:]}")
        yield base_url
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

"""Start `bentoml serve` on 127.0.0.1 for end-to-end tests, and stop it with its workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

from settings import PROJECT_ROOT
from tests.support.helpers import free_port, is_ready, wait_until

BENTOML = str(Path(sys.executable).parent / "bentoml")
START_TIMEOUT_S = 240


@contextlib.contextmanager
def serve(
    target: str = "service:Gateway",
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait_ready: bool = True,
) -> Iterator[str]:
    """Serve `target` on a free port and yield its base URL."""
    with serve_process(target, env, port, wait_ready) as (base_url, _):
        yield base_url


@contextlib.contextmanager
def serve_process(
    target: str = "service:Gateway",
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait_ready: bool = True,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Like serve(), also yielding the server's process (the leader of its process group)."""
    port = port or free_port()
    # A BENTOML_HOME of its own: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir
    # when it starts, which would wipe the metrics of a server already running beside it.
    home = tempfile.mkdtemp(prefix="depthid-bentoml-home-")
    full_env = {
        **os.environ,
        "BENTOML_HOME": home,
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
        start_new_session=True,  # a Ctrl-C in the test run does not reach it directly
    )
    process.log_path = log.name  # type: ignore[attr-defined]  # read by benchmarks/gpu_check.py
    base_url = f"http://127.0.0.1:{port}"
    try:
        if wait_ready and not wait_until(
            lambda: is_ready(base_url) or process.poll() is not None, start_timeout_s
        ):
            raise RuntimeError(f"{target} not ready in {start_timeout_s}s; log: {log.name}")
        if process.poll() is not None:
            raise RuntimeError(f"{target} exited: {Path(log.name).read_text()[-4000:]}")
        yield base_url, process
    finally:
        stop(process)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def process_tree(process: subprocess.Popen) -> list[psutil.Process]:
    """The server and every process under it. BentoML starts its workers in sessions of their
    own, so a process-group signal would miss them."""
    try:
        root = psutil.Process(process.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the server and all its workers at once, as a crashed machine would."""
    for member in process_tree(process):
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()


def stop(process: subprocess.Popen) -> None:
    """Graceful stop (SIGTERM, as Kubernetes does), then SIGKILL whatever is left."""
    tree = process_tree(process)
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    _, alive = psutil.wait_procs(tree, timeout=10)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    if process.poll() is None:
        process.kill()
        process.wait()

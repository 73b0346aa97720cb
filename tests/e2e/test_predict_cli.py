"""`depthid predict` (cli/predict.py) against a served tiny instance: it reads files, writes the
images, prints the seed, shows v2 progress and the server's own error messages. And every /docs
example answers 200 on the real tiny runners."""

from __future__ import annotations

import io
import subprocess
import sys
import tomllib

import httpx
import pytest
from PIL import Image

from settings import PROJECT_ROOT

pytestmark = pytest.mark.served  # the shared `bentoml serve` of tests/conftest.py

PAYLOADS = PROJECT_ROOT / "loadtests" / "payloads"


def predict(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "predict", *args, "--url", url],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pyproject_declares_the_command():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["depthid"] == "cli:main"


def test_v1_reads_a_file_and_writes_the_image(served_url, tmp_path):
    out = tmp_path / "room.jpg"
    image = f"image=@{PAYLOADS / 'flux_control.jpg'}"
    # prompt=42 stays a string (the schema says so); seed=42 becomes a number.
    done = predict(served_url, "sd1.5-controlnet-depth", "-i", image, "-i", "prompt=42",
                   "-i", "seed=42", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "seed 42" in done.stdout and f"wrote {out}" in done.stdout
    assert Image.open(out).format == "JPEG"


def test_async_shows_progress_and_writes_every_image(served_url, tmp_path):
    out = tmp_path / "face.jpg"
    face = f"face_image=@{PAYLOADS / 'face.png'}"
    done = predict(served_url, "instantid", "-i", face, "-i", "prompt=a portrait",
                   "-i", "samples=2", "-i", "num_steps=4", "-o", str(out), "--async")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "submitted " in done.stdout and "COMPLETED at" in done.stdout
    assert "ignored these fields: num_steps" in done.stderr
    for n in (1, 2):
        assert Image.open(tmp_path / f"face-{n}.jpg").size == (64, 64)


def test_a_server_error_is_the_servers_message(served_url, tmp_path):
    done = predict(
        served_url, "sd1.5-controlnet-depth", "-i", "prompt=x", "-o", str(tmp_path / "x")
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid field 'image'") and "(HTTP 400)" in done.stderr
    unknown = predict(served_url, "sd2-depth", "-i", "prompt=x")
    assert unknown.returncode == 1 and "unknown model 'sd2-depth'" in unknown.stderr
    missing = predict(served_url, "sd1.5-controlnet-depth", "-i", "image=@/no/such.jpg")
    assert missing.returncode == 1 and "cannot read /no/such.jpg" in missing.stderr


def test_every_docs_example_answers_200_on_the_tiny_runners(served_url):
    spec = httpx.get(f"{served_url}/openapi.json").json()
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue  # v2 takes the same bodies (tests/gateway/test_docs_examples.py)
        content = operations["post"]["requestBody"]["content"]["application/json"]
        [example] = content["examples"].values()
        response = httpx.post(f"{served_url}{path}", json=example["value"], timeout=300)
        assert response.status_code == 200, (path, response.text)
        Image.open(io.BytesIO(response.content)).verify()

"""The load test's pictures: the `release` profile sends bodies built from scikit-image's
astronaut.png, a real photo a real face detector finds (no detector of `full` runs here, so this
checks the photo's provenance and the pictures' pixels and sizes), while `smoke` keeps the
synthetic faces the tiny detector finds. Locust is imported in a subprocess only: it patches the
standard library (gevent) of the process that imports it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.data._registry import registry

from loadtests import photo_payloads
from settings import PROJECT_ROOT

SCENARIOS = PROJECT_ROOT / "loadtests" / "scenarios"
LOCUSTFILE = PROJECT_ROOT / "loadtests" / "locustfile.py"
PICTURE_FIELDS = {
    "sd1.5-controlnet-depth": ("image",),
    "instantid": ("face_image",),
    "insta-depth": ("face_image", "pose_image"),
    "flux-depth-pro": ("control_image",),
}


def bodies_for(scenario: str) -> dict[str, dict]:
    """The bodies the Locust users send under a scenario file, as Locust loads the locustfile."""
    script = f"""
import importlib.util, json, sys
from types import SimpleNamespace
spec = importlib.util.spec_from_file_location("locustfile", {str(LOCUSTFILE)!r})
locustfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locustfile)
options = SimpleNamespace(scenario={str(SCENARIOS / scenario)!r})
locustfile.apply_scenario(SimpleNamespace(parsed_options=options))
json.dump(locustfile.BODIES, sys.stdout)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd="/",  # not the project root: the locustfile finds its own imports
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def release() -> dict[str, dict]:
    return bodies_for("release.toml")


@pytest.fixture(scope="module")
def smoke() -> dict[str, dict]:
    return bodies_for("smoke.toml")


def pixels(body: dict, field: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body[field]))).convert("RGB"))


def test_the_photo_is_scikit_images_astronaut():
    """The file the payloads read is the one scikit-image ships and registers, by its hash."""
    assert photo_payloads.ASTRONAUT.is_file()
    digest = hashlib.sha256(photo_payloads.ASTRONAUT.read_bytes()).hexdigest()
    assert digest == registry["data/astronaut.png"]
    assert np.array_equal(np.asarray(photo_payloads.astronaut()), skimage.data.astronaut())


def test_the_scenarios_name_their_pictures():
    assert tomllib.loads((SCENARIOS / "release.toml").read_text())["payloads"] == "photo"
    assert tomllib.loads((SCENARIOS / "smoke.toml").read_text())["payloads"] == "synthetic"


def test_release_sends_the_photo_for_face_pose_and_depth(release):
    photo = skimage.data.astronaut()  # 512 x 512
    left, top, right, bottom = photo_payloads.FACE_BOX
    face = photo[top:bottom, left:right]
    assert face.shape == (320, 320, 3)
    for model in ("instantid", "insta-depth"):
        assert np.array_equal(pixels(release[model], "face_image"), face)
    assert np.array_equal(pixels(release["insta-depth"], "pose_image"), photo[:, ::-1])  # mirrored
    assert "pose_image" not in release["instantid"]  # as in the synthetic body
    assert np.array_equal(pixels(release["sd1.5-controlnet-depth"], "image"), photo)
    assert np.array_equal(pixels(release["flux-depth-pro"], "control_image"), photo)


def test_release_keeps_everything_but_the_pictures_and_differs_from_smoke(release, smoke):
    assert release.keys() == smoke.keys() == PICTURE_FIELDS.keys()
    for model, fields in PICTURE_FIELDS.items():
        for field in fields:
            assert not np.array_equal(pixels(release[model], field), pixels(smoke[model], field))
        others = {k: v for k, v in release[model].items() if k not in fields}
        assert others == {k: v for k, v in smoke[model].items() if k not in fields}


def test_smoke_keeps_the_synthetic_faces(smoke):
    shipped = json.loads((PROJECT_ROOT / "loadtests" / "payloads" / "instantid.json").read_text())
    assert smoke["instantid"] == shipped

"""The container image (container/, `make image`): built with podman on this machine, proven by
its smoke stage, and consistent with the Kubernetes manifests that run it.

The build test is the CPU image end to end: `make image` builds it from the Bento, on the public
base or the Debian one, with this machine's pip settings, and its last stage serves all four
models as the image's user. The other tests are quick: the pip settings hand-over, and the image
against the manifests (user, command, working folder, environment, image names and tags).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gateway.schemas.registry import MODEL_SPECS
from settings import PROJECT_ROOT
from tests.support.gateway_client import make_client
from tests.support.helpers import RecordingRunner

sys.path.insert(0, str(PROJECT_ROOT / "container"))
import smoke  # container/smoke.py: what the image's last stage runs

CONTAINERFILE = (PROJECT_ROOT / "container" / "Containerfile").read_text()
K8S = PROJECT_ROOT / "k8s"
KUBECTL = str(Path(sys.executable).parent / "kubectl")


def make_dry_run(*targets: str) -> str:
    return subprocess.run(
        ["make", "-n", *targets], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout


def image_names() -> dict[str, str]:
    """{"cpu": repo:tag, "gpu": repo:tag} as `make image` and `make image-gpu` name them."""
    out = make_dry_run("image", "image-gpu")
    return dict(re.findall(r"container/build\.sh (cpu|gpu) (\S+)", out))


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def gateway(docs: list[dict]) -> dict:
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "depthid-gateway"
    ]
    return deployment


def containerfile_cmd() -> list[str]:
    """The images' entry command: the CPU and the GPU image have the same."""
    (cmd,) = set(re.findall(r"^CMD (\[.*\])$", CONTAINERFILE, re.MULTILINE))
    return json.loads(cmd)


# --- the build ---------------------------------------------------------------------------------


@pytest.mark.timeout(3600)
@pytest.mark.slow
def test_make_image_builds_the_cpu_image_and_its_smoke_stage_answers_every_model(tmp_path):
    """`make image` as a user runs it; the build fails unless the smoke stage passed, and says
    so model by model; the image is tagged with the name the cpu-tiny overlay runs."""
    result = subprocess.run(
        ["make", "image", "ENGINE=podman"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=3500,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    for model in MODEL_SPECS:
        # an image whose long side is the tiny profile's 64 px
        assert re.search(rf"smoke: v1 {re.escape(model)}: 200 (JPEG|PNG) (64x\d+|\d+x64)", log), (
            model
        )
    assert f"smoke: v2 {next(iter(MODEL_SPECS))}: COMPLETED" in log
    assert "smoke: v1 without a key: 401" in log  # with the manifests' API keys on
    name = image_names()["cpu"]
    assert re.search(rf"image: \[\d+ s\] built {re.escape(name)}: \d+ MB", log)
    inspected = subprocess.run(
        ["podman", "image", "inspect", name], capture_output=True, text=True, check=True
    )
    (config,) = [image["Config"] for image in json.loads(inspected.stdout)]
    assert config["User"] == "bentoml"
    assert config["Cmd"] == containerfile_cmd()
    assert (
        config["WorkingDir"]
        == gateway(render("cpu-tiny"))["spec"]["template"]["spec"]["containers"][0]["workingDir"]
    )
    # nothing of this machine's pip settings in the image's configuration or history
    assert not any(entry.startswith("PIP_") for entry in config.get("Env", []))
    history = subprocess.run(
        ["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "container" / "pip_settings.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for mount in re.findall(r"^--volume=([^:]+):", settings, re.MULTILINE):
        assert mount not in history


# --- the pip settings hand-over ----------------------------------------------------------------


def pip_settings(tmp_path: Path, engine: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # Only the variables given: no pip configuration file of this machine (os.devnull).
    return subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "container" / "pip_settings.py"),
            str(tmp_path),
            "--engine",
            engine,
        ],
        env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_pip_settings_pass_local_folders_read_only_and_the_config_as_a_secret(tmp_path):
    wheels, index, cert = tmp_path / "wheels", tmp_path / "pypi" / "simple", tmp_path / "ca.pem"
    wheels.mkdir()
    index.mkdir(parents=True)
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    result = pip_settings(
        tmp_path / "out",
        "podman",
        {
            "PIP_FIND_LINKS": str(wheels),
            "PIP_EXTRA_INDEX_URL": f"file://{index} https://download.pytorch.org/whl/cpu",
            "PIP_CERT": str(cert),
        },
    )
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "out" / "pip.conf"
    assert set(result.stdout.splitlines()) == {
        f"--secret=id=pip.conf,src={conf}",
        f"--volume={wheels}:{wheels}:ro",
        # a local index's pages link to the files beside `simple/`
        f"--volume={index.parent}:{index.parent}:ro",
        f"--volume={cert}:{cert}:ro",
    }
    text = conf.read_text()
    assert text.startswith("[global]\n")
    assert f"find-links = {wheels}\n" in text
    assert f"cert = {cert}\n" in text
    assert "https://download.pytorch.org/whl/cpu" in text  # remote indexes pass as they are


def test_pip_settings_refuse_local_folders_with_docker_and_missing_paths(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    docker = pip_settings(tmp_path / "a", "docker", {"PIP_FIND_LINKS": str(wheels)})
    assert docker.returncode == 1 and "only podman can mount" in docker.stderr
    missing = pip_settings(tmp_path / "b", "podman", {"PIP_FIND_LINKS": str(tmp_path / "nope")})
    assert missing.returncode == 1 and "missing paths" in missing.stderr
    remote_only = pip_settings(
        tmp_path / "c", "docker", {"PIP_INDEX_URL": "https://pypi.example.com/simple"}
    )
    assert remote_only.returncode == 0, remote_only.stderr


# --- the image against the manifests ----------------------------------------------------------


def test_the_smoke_stage_runs_the_image_entry_command_which_the_gateway_manifest_runs():
    (smoke_run,) = re.findall(r"smoke\.py -- \\\n\s*(.*)$", CONTAINERFILE, re.MULTILINE)
    assert smoke_run.split() == containerfile_cmd()
    for overlay in ("cpu-tiny", "gpu"):
        (container,) = gateway(render(overlay))["spec"]["template"]["spec"]["containers"]
        assert container["command"] == containerfile_cmd()
    assert smoke.serve_command(containerfile_cmd(), 4321)[-4:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "4321",
    ]


def test_the_smoke_stage_runs_with_the_cpu_overlays_environment_and_user():
    docs = render("cpu-tiny")
    (config,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "depthid-config" in d["metadata"]["name"]
    ]
    pointing_elsewhere = {"DEPTHID_JOB_STORE_URL"} | {
        name for name in config["data"] if name.endswith("_RUNNER_URL")
    }
    expected = {k: v for k, v in config["data"].items() if k not in pointing_elsewhere}
    assert expected == smoke.MANIFEST_ENV
    spec = gateway(docs)["spec"]["template"]["spec"]
    # the Gateway's own variable: keys on, which the smoke turns on with a key of its own
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert "DEPTHID_API_KEYS_FILE" in env
    assert smoke.KEYS_FILE.startswith(smoke.WRITABLE[0] + "/")
    mounts = {
        m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if not m.get("readOnly")
    }
    assert set(smoke.WRITABLE) == mounts
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    uid = spec["securityContext"]["runAsUser"]
    assert f"useradd -m -u {uid} -g {uid}" in CONTAINERFILE
    assert CONTAINERFILE.index("USER bentoml") < CONTAINERFILE.index("FROM image AS smoke")


def test_the_overlays_run_the_images_make_builds():
    names = image_names()
    cpu_repo, cpu_tag = names["cpu"].rsplit(":", 1)
    gpu_tag = names["gpu"].rsplit(":", 1)[1]
    for overlay, (repo, tag) in {
        "cpu-tiny": (cpu_repo, cpu_tag),
        "gpu": ("registry.example.com/depthid", gpu_tag),  # pushed to your registry
        "gpu-hpa": ("registry.example.com/depthid", gpu_tag),
    }.items():
        images = {
            c["image"]
            for d in render(overlay)
            if d["kind"] in {"Deployment", "Job"}
            for c in d["spec"]["template"]["spec"]["containers"]
            if "depthid" in c["image"]
        }
        assert images == {f"{repo}:{tag}"}, overlay


def test_dependencies_come_before_the_code_and_tiny_models_only_in_the_cpu_image():
    """(The GPU image's stages: tests/deploy/test_image_gpu.py.)"""
    deps = CONTAINERFILE.index("install_packages.py cpu")
    code = CONTAINERFILE.index("COPY src/ ")
    assert CONTAINERFILE.index("COPY src/pyproject.toml") < deps < code
    assert code < CONTAINERFILE.index("python -m models.build")


def test_the_smoke_stops_waiting_when_a_service_fails_to_start(tmp_path):
    log = tmp_path / "server.log"
    log.write_bytes(b'{"message": "Application startup failed. Exiting."}\n')
    server = subprocess.Popen(["sleep", "60"])
    try:
        started = time.monotonic()
        with pytest.raises(AssertionError, match="failed to start"):
            smoke.wait_ready("http://127.0.0.1:9", server, log)  # nothing listens on port 9
        assert time.monotonic() - started < smoke.READY_TIMEOUT_S
    finally:
        server.kill()
        server.wait()


def test_the_smoke_sends_each_model_its_docs_example():
    """The smoke asks the server which models it serves (/openapi.json) and sends each its
    /docs example, so a new model is smoked without a line here."""
    with make_client(RecordingRunner(), MODEL_SPECS) as client:
        openapi = client.get("/openapi.json").json()
    requests = smoke.v1_requests(openapi)
    assert list(requests) == list(MODEL_SPECS)
    for model, body in requests.items():
        assert body == MODEL_SPECS[model].example()["value"]
    for operations in openapi["paths"].values():  # a server without the pictures
        content = operations.get("post", {}).get("requestBody", {}).get("content", {})
        content.get("application/json", {}).pop("examples", None)
    with pytest.raises(AssertionError, match="no /docs example"):
        smoke.v1_requests(openapi)


def test_the_smoke_refuses_an_entry_command_without_host_or_port():
    with pytest.raises(SystemExit, match="--port"):
        smoke.serve_command(["bentoml", "serve", "service:Gateway", "--host", "0.0.0.0"], 1)


def test_the_debian_base_is_built_once_then_imported_from_its_cached_tarball(tmp_path):
    """A cached root file system is imported, never bootstrapped again; a built one is kept."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(
        ["tar", "-C", str(root), "-cf", str(cache / "debian-bookworm-py311.tar"), "."], check=True
    )
    image = f"localhost/depthid-test-base:{tmp_path.name.lower()}"
    script = [str(PROJECT_ROOT / "container" / "debian_base.sh"), "podman", image, str(cache)]
    try:
        first = subprocess.run(script, capture_output=True, text=True, check=False)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "importing" in first.stdout and "debootstrap" not in first.stdout
        again = subprocess.run(script, capture_output=True, text=True, check=False)
        assert again.returncode == 0 and "already built" in again.stdout
    finally:
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True, check=False)

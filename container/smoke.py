"""The CPU image's proof that it runs: its last build stage runs this, so a failure fails the build.

It starts the image's own entry command (the Containerfile's CMD, passed after `--`) as the
image's non-root user, with the Kubernetes manifests' environment (k8s/overlays/cpu-tiny:
read-only root, so BentoML's home and HOME on the writable paths, offline hub) but the job
store in memory and the runners as local processes, as one container serves them. It waits for
`/readyz`, sends one v1 request per model the server documents (each model's /docs example, read
from its /openapi.json) and one v2 job, checks each answer (status, a decodable image of its
content type and of the tiny profile's size) and stops the server. A build cannot publish
a port, so the command's `--host` and `--port` are replaced by 127.0.0.1 and a free port.

    python smoke.py -- bentoml serve service:Gateway --host 0.0.0.0 --port 3000
    python smoke.py --cuda 13.0 -- bentoml serve ...   # the GPU image's smoke stage

`--cuda VERSION` (the GPU image) first checks what a build without a GPU can see of its CUDA: torch
is a CUDA build of VERSION's major, onnxruntime offers its CUDA execution provider, every library
their shared objects link is in the image but the driver's (which the GPU node's container
runtime mounts), and triton's C launcher (torch.compile on the GPU) compiles; the server then
runs on the CPU all the same (CUDA's torch runs there too).

Only the standard library and Pillow (one of the image's packages): the image has no test tools.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

# What k8s/overlays/cpu-tiny gives every container (the ConfigMap depthid-config), less what
# points at other pods (runner URLs, Redis) (tests/deploy/test_image.py checks that these equal the
# rendered overlay's). /tmp and BENTOML_HOME are the manifests' writable paths.
MANIFEST_ENV = {
    "DEPTHID_PROFILE": "tiny",
    "DEPTHID_DEVICE": "cpu",
    "DEPTHID_GENERATION_TIMEOUT_S": "300",
    "DEPTHID_SHUTDOWN_GRACE_S": "60",
    "BENTOML_HOME": "/var/lib/bentoml",
    "HOME": "/tmp",
    "BENTOML_DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
}
WRITABLE = ("/tmp", "/var/lib/bentoml")
# The GPU driver's libraries, which the container runtime mounts on a GPU node (NVIDIA's
# container toolkit, NVIDIA_DRIVER_CAPABILITIES=compute): not in the image.
DRIVER_LIBRARIES = {"libcuda.so.1"}
# Where a read-only root would refuse a write that this build's file system lets the user make
# (its home, /var/tmp): the smoke fails if the server wrote there.
READ_ONLY_IN_K8S = ("/home", "/app", "/etc", "/opt", "/var")
# The Gateway's manifest turns API keys on (DEPTHID_API_KEYS_FILE, from a Secret): the smoke
# writes a keys file of one key of its own to /tmp and sends it, as a client of that overlay.
API_KEY = "did_smoke_stage_only"
KEYS_FILE = "/tmp/smoke-api-keys.json"
# What the engine writes for every RUN step (and the kubelet mounts in a pod), not the server.
ENGINE_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
# This script's own folder, copied in by the smoke stage just before it runs: its time can fall
# within the second of slack below, and nothing of it ends up in the image.
SMOKE_FOLDER = str(Path(__file__).resolve().parent)
READY_TIMEOUT_S = 900  # three runners loading on a busy 2-core CI machine
REQUEST_TIMEOUT_S = 600
TINY_LONG_SIDE = 64
STARTUP_FAILED = b"Application startup failed"  # uvicorn's line when a service's set-up raises
SERVER_LOG = Path("/tmp/smoke-server.log")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(entry: list[str], port: int) -> list[str]:
    """The entry command with its --host and --port pointed at this build's loopback port."""
    command = list(entry)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag not in command:
            raise SystemExit(f"smoke: the entry command {entry} has no {flag}")
        command[command.index(flag) + 1] = value
    return command


def call(url: str, body: dict | None = None, key: str | None = API_KEY) -> tuple[int, str, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"x-api-key": key} if key else {})}
    request = urllib.request.Request(url, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def check_image(what: str, content_type: str, data: bytes) -> str:
    image = Image.open(io.BytesIO(data))
    image.load()
    if content_type != f"image/{image.format.lower()}":
        raise AssertionError(f"{what}: content type {content_type!r} for a {image.format} image")
    if max(image.size) != TINY_LONG_SIDE:
        raise AssertionError(f"{what}: {image.size}, long side not {TINY_LONG_SIDE}")
    return f"{image.format} {image.size[0]}x{image.size[1]}"


def v1_requests(openapi: dict) -> dict[str, dict]:
    """One request body per model the server documents: its v1 route's /docs example, which
    answers 200 as it stands."""
    bodies = {}
    for path, operations in openapi["paths"].items():
        operation = operations.get("post", {})
        if path.startswith("/v1/") and "requestBody" in operation:
            examples = operation["requestBody"]["content"]["application/json"].get("examples")
            if not examples:
                raise AssertionError(f"{path} has no /docs example")
            [example] = examples.values()
            bodies[path.removeprefix("/v1/")] = example["value"]
    if not bodies:
        raise AssertionError("/openapi.json documents no v1 generation route")
    return bodies


def check_cuda_build(cuda: str) -> list[str]:
    """What the GPU image's torch and onnxruntime say of CUDA, one line each; raises unless torch
    is built for `cuda`'s major and onnxruntime lists its CUDA provider. Neither needs a GPU."""
    import onnxruntime
    import torch

    major = cuda.split(".")[0]
    if torch.version.cuda is None or torch.version.cuda.split(".")[0] != major:
        raise AssertionError(f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, "
                             f"not {major}")  # fmt: skip
    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise AssertionError(f"onnxruntime {onnxruntime.__version__} offers {providers}: no CUDA")
    cudnn = torch.backends.cudnn.version()  # loads cuDNN's library: no GPU needed
    libraries = [
        *Path(torch.__file__).parent.glob("lib/*.so*"),
        *Path(onnxruntime.__file__).parent.glob("capi/*.so"),
    ]
    missing = {
        f"{library.name}: {line.split()[0]}"
        for library in libraries
        for line in subprocess.run(
            ["ldd", str(library)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if "not found" in line and line.split()[0] not in DRIVER_LIBRARIES
    }
    if missing:
        raise AssertionError(f"libraries not in the image: {sorted(missing)}")
    return [
        f"torch {torch.__version__}: CUDA {torch.version.cuda}, cuDNN {cudnn}",
        f"onnxruntime {onnxruntime.__version__}: {', '.join(providers)}",
        f"{len(libraries)} libraries of torch and onnxruntime: all they link is in the image "
        f"but {', '.join(sorted(DRIVER_LIBRARIES))}",
        compile_triton_launcher(),
    ]


def compile_triton_launcher() -> str:
    """Compiles triton's C launcher as triton does at torch.compile's first GPU kernel (the C
    compiler, Python's headers, CUDA's from the wheel), without linking the driver."""
    import triton.backends.nvidia

    backend = Path(triton.backends.nvidia.__file__).parent
    python_headers = sysconfig.get_paths()["include"]
    out = Path("/tmp/smoke-triton-launcher.o")
    command = ["gcc", "-c", "-fPIC", "-O3", str(backend / "driver.c"), "-o", str(out),
               f"-I{backend / 'include'}", f"-I{python_headers}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"triton's launcher does not compile: {result.stderr[-2000:]}")
    out.unlink()
    return "triton's launcher compiles (gcc, Python's headers): torch.compile can run"


def written_outside_writable(since: float) -> list[str]:
    """What the server wrote outside the manifests' writable paths since `since`."""
    found = []
    for top in READ_ONLY_IN_K8S:
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if os.path.join(folder, d) not in WRITABLE]
            for name in files + dirs:
                path = os.path.join(folder, name)
                if path in ENGINE_FILES or path == SMOKE_FOLDER:
                    continue
                try:
                    if os.lstat(path).st_mtime >= since:
                        found.append(path)
                except OSError:
                    continue
    return found


def wait_ready(base: str, server: subprocess.Popen, log: Path) -> None:
    started = time.monotonic()
    last_said = 0.0
    while True:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with status {server.returncode}")
        # A runner whose start fails is not started again: /readyz would stay 503 until the
        # deadline, so say it now.
        if STARTUP_FAILED in log.read_bytes():
            raise AssertionError("a service of the server failed to start (its log below)")
        try:
            status, _, _ = call(f"{base}/readyz")
        except OSError:
            status = None
        waited = time.monotonic() - started
        if status == 200:
            print(f"smoke: /readyz 200 after {waited:.0f} s", flush=True)
            return
        if waited > READY_TIMEOUT_S:
            raise AssertionError(f"/readyz not 200 after {READY_TIMEOUT_S} s (last: {status})")
        if waited - last_said >= 15:
            print(f"smoke: waiting for /readyz: {waited:.0f} s, last {status}", flush=True)
            last_said = waited
        time.sleep(2)


def run_v2(base: str, model: str, body: dict) -> str:
    status, _, raw = call(f"{base}/v2/{model}", body)
    if status != 200:
        raise AssertionError(f"v2 submit: {status} {raw[:300]!r}")
    job = json.loads(raw)
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        _, _, raw = call(job["status_url"])
        state = json.loads(raw)["status"]
        if state in ("COMPLETED", "FAILED"):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"v2 job {job['request_id']} still {state}")
        time.sleep(1)
    status, _, raw = call(job["response_url"])
    result = json.loads(raw)
    if status != 200 or result.get("status") != "COMPLETED":
        raise AssertionError(f"v2 result: {status} {raw[:300]!r}")
    status, got_type, data = call(result["output"][0])
    if status != 200:
        raise AssertionError(f"v2 output: {status} {data[:300]!r}")
    return check_image("v2 output", got_type, data)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: smoke.py [--cuda VERSION] -- ENTRY COMMAND...")
    options, entry = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    if options:
        if options[0] != "--cuda" or len(options) != 2:
            raise SystemExit(f"smoke: unknown options {options} (only --cuda VERSION)")
        for line in check_cuda_build(options[1]):
            print(f"smoke: {line}", flush=True)
    if os.getuid() == 0:
        raise SystemExit("smoke: runs as the image's user, not root (USER in the Containerfile)")
    for path in WRITABLE:
        if not os.access(path, os.W_OK):
            raise SystemExit(f"smoke: {path}, a writable path of the manifests, is not writable")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(KEYS_FILE, "w") as keys:
        digest = hashlib.sha256(API_KEY.encode()).hexdigest()
        json.dump({"keys": [{"name": "smoke", "sha256": digest}]}, keys)
    env = {**os.environ, **MANIFEST_ENV, "DEPTHID_API_KEYS_FILE": KEYS_FILE}
    env.pop("DEPTHID_JOB_STORE_URL", None)
    command = serve_command(entry, port)
    started_at = time.time() - 1  # file times may be rounded down
    print(f"smoke: {' '.join(command)} as uid {os.getuid()} in {os.getcwd()}", flush=True)
    log = SERVER_LOG.open("w+b")  # read back on failure
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    failed = None
    try:
        wait_ready(base, server, SERVER_LOG)
        _, _, raw = call(f"{base}/openapi.json")
        requests = v1_requests(json.loads(raw))
        first, first_body = next(iter(requests.items()))
        status, _, data = call(f"{base}/v1/{first}", first_body, key=None)
        if status != 401:
            raise AssertionError(f"v1 without a key: {status}, not 401 (keys are on)")
        print("smoke: v1 without a key: 401", flush=True)
        for model, body in requests.items():
            started = time.monotonic()
            status, got_type, data = call(f"{base}/v1/{model}", body)
            if status != 200:
                raise AssertionError(f"v1 {model}: {status} {data[:300]!r}")
            seen = check_image(f"v1 {model}", got_type, data)
            print(f"smoke: v1 {model}: 200 {seen} in {time.monotonic() - started:.1f} s",
                  flush=True)  # fmt: skip
        started = time.monotonic()
        seen = run_v2(base, first, first_body)
        print(f"smoke: v2 {first}: COMPLETED {seen} in "
              f"{time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
    except (AssertionError, OSError, ValueError, KeyError) as error:
        failed = error
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    written = written_outside_writable(started_at) if failed is None else []
    if written:
        failed = AssertionError(
            f"wrote outside {WRITABLE} (read-only in Kubernetes): {written[:20]}"
        )
    if failed is not None:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-6000:]
        print(f"smoke: FAILED: {failed}\n--- server log (end) ---\n{tail}", file=sys.stderr)
        return 1
    print(
        f"smoke: the image answers every model (v1) and a v2 job, writing only to {WRITABLE}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

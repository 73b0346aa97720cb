"""k8s/: every overlay renders with kustomize and validates strictly (Kubernetes' own kinds with
kubernetes-validate, the custom resources against the CRD schemas kept in k8s/schemas/), and the
rendered output holds the deployment policy that `policy_violations` checks. The policy tests
also break rendered copies on purpose, to show that each check finds what it is there for.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from benchmarks.cold_start import PROBE_MARGIN, scaled_time_to_ready, weight_scales
from gateway.http import route_templates
from gateway.jobs.redis_store import QUEUE
from gateway.tenancy.api_keys import KeysFile, hash_key
from settings import PROJECT_ROOT, Settings

K8S = PROJECT_ROOT / "k8s"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if path.is_dir())
GPU_OVERLAYS = [name for name in OVERLAYS if name.startswith("gpu")]
# The oldest Kubernetes the manifests target, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
# Custom resources: (apiVersion, kind) -> the CRD's schema in k8s/schemas/ (README there).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
COMPONENT = "app.kubernetes.io/component"
API_KEYS_FILE = "/etc/depthid/api-keys.json"
API_KEYS_SECRET, API_KEYS_SECRET_KEY = "depthid-api-keys", "api-keys.json"
# Namespaces whose pods may reach the runners or Redis besides the Gateway: Prometheus scraping
# the runners' /metrics (components/monitoring), KEDA reading the queue (components/keda).
ALLOWED_SYSTEM_NAMESPACES = {"monitoring", "keda"}
# The runner Deployment of each runner (scale_to_zero_runners' names).
RUNNER_DEPLOYMENTS = {
    "sd15_depth": "depthid-runner-sd15-depth",
    "flux_depth": "depthid-runner-flux-depth",
    "instantid": "depthid-runner-instantid",
}
# docs/deploy.md, "Sizing from the time to ready": the measured run (benchmarks/cold_start.py's
# line for sd15_depth with the read-ahead) every runner's startup probe is derived from.
DEPLOY_DOC = PROJECT_ROOT / "docs" / "deploy.md"
MEASURED_RUN = re.compile(
    r"^sd15_depth \([^)]*read-ahead \d+\): ready in (?P<total>[\d.]+) s = (?P<phases>.+)$",
    re.MULTILINE,
)
# A woken pod's scheduling and container start on a free GPU node with the image on it: what a
# request after zero waits besides Prometheus, KEDA and the runner's start (docs/deploy.md).
POD_START_S = 30
# What the scale-to-zero deadline may round up the wait and generation it covers by.
DEADLINE_ROUNDING_S = 60
THRESHOLDS = PROJECT_ROOT / "loadtests" / "thresholds.toml"
# The key whose hash is in overlays/cpu-tiny/api-keys.example.json (docs/deploy.md prints it).
EXAMPLE_API_KEY = "did_example_cpu_tiny_only_not_a_secret"


@functools.cache
def measured_run() -> dict[str, float]:
    """The phases (seconds) and total of the run docs/deploy.md sizes the runners' start by."""
    match = MEASURED_RUN.search(DEPLOY_DOC.read_text())
    assert match, "docs/deploy.md quotes no measured sd15_depth run with the read-ahead"
    parts = (part.split() for part in match["phases"].split(", "))
    return {**{phase: float(seconds) for phase, seconds in parts}, "total": float(match["total"])}


@functools.cache
def time_to_ready_s() -> dict[str, float]:
    """Each runner's time to ready at real size, derived from the measured run."""
    return {
        runner: scaled_time_to_ready(measured_run(), scale)
        for runner, scale in weight_scales().items()
    }


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's manifests, as `kubectl kustomize` renders them."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


# --- validation -------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the fields (as the API server
    does with strict field validation, and kubernetes-validate --strict for built-in kinds)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    schema = json.loads((K8S / "schemas" / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(strict(schema))


def validate(doc: dict[str, Any]) -> None:
    """Raise when `doc` is not a valid resource: a built-in kind for every Kubernetes version of
    K8S_VERSIONS (strict), a custom resource for its CRD schema (strict)."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(rendered, overlay):
    docs = rendered[overlay]
    assert docs
    for doc in docs:
        validate(doc)  # raises on an invalid resource, or an unknown kind without a schema


@pytest.mark.parametrize(
    ("kind", "field"),
    [("Deployment", "replicaCount"), ("ScaledObject", "minReplicas"), ("ServiceMonitor", "jobs")],
)
def test_validation_refuses_an_unknown_field(rendered, kind, field):
    doc = copy.deepcopy(next(d for d in rendered["gpu"] if d["kind"] == kind))
    validate(doc)
    doc["spec"][field] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_every_crd_schema_is_used(rendered):
    used = {(doc["apiVersion"], doc["kind"]) for docs in rendered.values() for doc in docs}
    assert set(CRD_SCHEMAS) <= used


# --- the policy -------------------------------------------------------------------------------


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (doc for doc in docs if doc["kind"] in WORKLOAD_KINDS)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether `selector` matches `labels`: a Service's plain map, or a LabelSelector
    (matchLabels, matchExpressions; an empty one matches everything)."""
    is_label_selector = "matchLabels" in selector or "matchExpressions" in selector
    required = selector.get("matchLabels", {}) if is_label_selector else selector
    if any(labels.get(key) != value for key, value in required.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present = labels.get(expression["key"])
        if expression["operator"] == "In" and present not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and present in expression["values"]:
            return False
        if expression["operator"] == "Exists" and present is None:
            return False
        if expression["operator"] == "DoesNotExist" and present is not None:
            return False
    return True


def environment(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom), then its own `env` values."""
    config_maps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]].get("data", {}))
    env.update(
        {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    )
    return env


def setting(env: dict[str, str], name: str) -> float:
    """A numeric DepthID setting as the container sees it: its env value, else the default."""
    value = env.get(f"DEPTHID_{name.upper()}")
    return float(value) if value is not None else float(Settings.model_fields[name].default)


def pre_stop_sleep_s(container: dict[str, Any]) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def probe_budget_s(probe: dict[str, Any]) -> float:
    """How long a probe lets a container fail before acting (Kubernetes' defaults: 10 s, 3)."""
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )


def serves_depthid(container: dict[str, Any]) -> bool:
    """A Gateway or runner container: `bentoml serve <target>`."""
    return container.get("command", [])[:2] == ["bentoml", "serve"]


def container_violations(
    where: str, workload: dict[str, Any], container: dict[str, Any], docs: list[dict[str, Any]]
) -> Iterator[str]:
    spec = pod_spec(workload)
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(section, {}):
                yield f"{where}: no {section}.{resource}"
    pod_security, security = spec.get("securityContext", {}), container.get("securityContext", {})
    if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
        yield f"{where}: may run as root (runAsNonRoot)"
    if security.get("readOnlyRootFilesystem") is not True:
        yield f"{where}: root file system not read-only"
    if security.get("allowPrivilegeEscalation") is not False:
        yield f"{where}: allowPrivilegeEscalation is not false"
    if "ALL" not in security.get("capabilities", {}).get("drop", []):
        yield f"{where}: capabilities not dropped (drop: [ALL])"
    image = container.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        yield f"{where}: image {image!r} is not pinned to a tag"

    if container in spec["containers"] and workload["kind"] in LONG_RUNNING_KINDS:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe not in container:
                yield f"{where}: no {probe}"
    if not serves_depthid(container):
        return
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        http = container.get(probe, {}).get("httpGet", {})
        if http and http.get("path") != path:
            yield f"{where}: {probe} asks {http.get('path')}, not {path}"
    env = environment(container, docs)
    deadline = setting(env, "generation_timeout_s") + pre_stop_sleep_s(container)
    if container["name"] == "gateway":  # on SIGTERM it also hands its v2 jobs back
        deadline += setting(env, "shutdown_grace_s")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= deadline:
        yield f"{where}: terminationGracePeriodSeconds {grace} <= drain time {deadline:g}"
    mounts = {
        mount["mountPath"]: mount["name"]
        for mount in container.get("volumeMounts", [])
        if not mount.get("readOnly")
    }
    empty_dirs = {volume["name"] for volume in spec.get("volumes", []) if "emptyDir" in volume}
    for path in ("/tmp", env.get("BENTOML_HOME")):
        if mounts.get(path) not in empty_dirs:
            yield f"{where}: no writable emptyDir at {path}"


def workload_name(workload: dict[str, Any]) -> str:
    return workload["metadata"]["name"]


def workload_violations(
    workload: dict[str, Any], docs: list[dict[str, Any]], gpu: bool
) -> Iterator[str]:
    name = f"{workload['kind']} {workload_name(workload)}"
    spec = pod_spec(workload)
    for container in all_containers(spec):
        yield from container_violations(f"{name}/{container['name']}", workload, container, docs)
    if workload["kind"] == "Deployment" and not any(
        selects(doc["spec"]["selector"], pod_labels(workload))
        for doc in docs
        if doc["kind"] == "PodDisruptionBudget"
    ):
        yield f"{name}: no PodDisruptionBudget"
    if pod_labels(workload).get(COMPONENT) != "runner":
        return
    for container in spec["containers"]:
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpu and str(gpus) != "1":
            yield f"{name}: asks for {gpus} nvidia.com/gpu, not 1"
        if not gpu and gpus is not None:
            yield f"{name}: asks for a GPU outside a GPU overlay"
        if gpu:
            (runner,) = [r for r, d in RUNNER_DEPLOYMENTS.items() if d == workload_name(workload)]
            budget = probe_budget_s(container.get("startupProbe", {}))
            needed = PROBE_MARGIN * time_to_ready_s()[runner]
            if budget < needed:
                yield (
                    f"{name}: startup probe gives loading {budget:g} s, less than {PROBE_MARGIN}x "
                    f"its time to ready ({needed:.0f} s)"
                )
    if gpu and not (spec.get("nodeSelector") and spec.get("tolerations")):
        yield f"{name}: no GPU node selector and toleration"


def network_violations(docs: list[dict[str, Any]]) -> Iterator[str]:
    """Runners and Redis: selected by an ingress policy, reached only from the Gateway's pods
    (or from the allowed system namespaces)."""
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    for workload in workloads(docs):
        labels = pod_labels(workload)
        if labels.get(COMPONENT) not in {"runner", "job-store"}:
            continue
        name = f"{workload['kind']} {workload['metadata']['name']}"
        guarding = [
            policy
            for policy in policies
            if "Ingress" in policy["spec"].get("policyTypes", [])
            and selects(policy["spec"]["podSelector"], labels)
        ]
        if not guarding:
            yield f"{name}: no NetworkPolicy limits who reaches it"
        for policy in guarding:
            for rule in policy["spec"].get("ingress", []):
                if not rule.get("from"):
                    yield f"{name}: {policy['metadata']['name']} lets anyone in"
                for peer in rule.get("from", []):
                    yield from peer_violations(name, policy["metadata"]["name"], peer)


def peer_violations(name: str, policy: str, peer: dict[str, Any]) -> Iterator[str]:
    if "namespaceSelector" in peer:
        namespace = peer["namespaceSelector"].get("matchLabels", {})
        if namespace.get("kubernetes.io/metadata.name") not in ALLOWED_SYSTEM_NAMESPACES:
            yield f"{name}: {policy} lets namespaces {namespace or 'all'} in"
    elif peer.get("podSelector", {}).get("matchLabels") != {COMPONENT: "gateway"}:
        yield f"{name}: {policy} lets pods other than the Gateway in: {peer}"


def gateway_violations(docs: list[dict[str, Any]]) -> Iterator[str]:
    """The Gateway finds every runner through a Service, and reads the API keys Secret."""
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    runners = [w for w in workloads(docs) if pod_labels(w).get(COMPONENT) == "runner"]
    gateways = [w for w in workloads(docs) if pod_labels(w).get(COMPONENT) == "gateway"]
    if not gateways:
        yield "no Gateway Deployment"
    for gateway in gateways:
        spec = pod_spec(gateway)
        (container,) = spec["containers"]
        env = environment(container, docs)
        reached = set()
        for field in (name for name in Settings.model_fields if name.endswith("_runner_url")):
            url = env.get(f"DEPTHID_{field.upper()}", "")
            match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
            service = services.get(match.group(1)) if match else None
            if service is None:
                yield f"gateway: DEPTHID_{field.upper()}={url!r} names no Service"
                continue
            port_ok = any(str(p["port"]) == match.group(2) for p in service["spec"]["ports"])
            targets = [r for r in runners if selects(service["spec"]["selector"], pod_labels(r))]
            if not port_ok or len(targets) != 1:
                yield f"gateway: {url} reaches {len(targets)} runner Deployments (port {port_ok})"
            reached.update(r["metadata"]["name"] for r in targets)
        for runner in runners:
            if runner["metadata"]["name"] not in reached:
                yield f"gateway: no runner URL reaches {runner['metadata']['name']}"
        if env.get("DEPTHID_API_KEYS_FILE") != API_KEYS_FILE:
            yield f"gateway: DEPTHID_API_KEYS_FILE is not {API_KEYS_FILE}"
        secret_files = {
            f"{mount['mountPath']}/{item['path']}"
            for volume in spec.get("volumes", [])
            if volume.get("secret", {}).get("secretName") == API_KEYS_SECRET
            for item in volume["secret"].get("items", [])
            if item["key"] == API_KEYS_SECRET_KEY
            for mount in container.get("volumeMounts", [])
            if mount["name"] == volume["name"]
        }
        if API_KEYS_FILE not in secret_files:
            yield f"gateway: Secret {API_KEYS_SECRET} is not mounted at {API_KEYS_FILE}"


def policy_violations(docs: list[dict[str, Any]], gpu: bool) -> list[str]:
    """Everything in the rendered `docs` that breaks the deployment policy, one line each:
    resources, non-root and read-only containers, probes on the real health routes, a drain
    longer than the longest generation, disruption budgets, GPUs for runners (`gpu`), network
    policies, and the Gateway's wiring to runners and API keys."""
    violations = []
    for workload in workloads(docs):
        violations.extend(workload_violations(workload, docs, gpu))
    violations.extend(network_violations(docs))
    violations.extend(gateway_violations(docs))
    return violations


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_holds_the_policy(rendered, overlay):
    assert policy_violations(rendered[overlay], gpu=overlay in GPU_OVERLAYS) == []


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name)


def container_of(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return pod_spec(find(docs, kind, name))["containers"][0]


def drop_probe(kind: str, name: str, probe: str) -> Callable[[list], None]:
    return lambda docs: container_of(docs, kind, name).pop(probe)


def drop_resource(kind: str, name: str, section: str, resource: str) -> Callable[[list], None]:
    return lambda docs: container_of(docs, kind, name)["resources"][section].pop(resource)


def set_security(kind: str, name: str, field: str, value: Any) -> Callable[[list], None]:
    return lambda docs: container_of(docs, kind, name)["securityContext"].update({field: value})


def shorten_grace(name: str) -> Callable[[list], None]:
    return lambda docs: pod_spec(find(docs, "Deployment", name)).update(
        terminationGracePeriodSeconds=300
    )


def drop_kind(kind: str) -> Callable[[list], None]:
    return lambda docs: docs.__setitem__(slice(None), [d for d in docs if d["kind"] != kind])


def open_runners(docs: list[dict[str, Any]]) -> None:
    find(docs, "NetworkPolicy", "depthid-runners-from-gateway")["spec"]["ingress"][0]["from"] = [
        {"podSelector": {}}
    ]


SD15, FLUX, GATEWAY = "depthid-runner-sd15-depth", "depthid-runner-flux-depth", "depthid-gateway"
REDIS, PULL = "depthid-redis", "depthid-pull-models"
# What to break in a rendered copy of the gpu overlay, and what the violation then says.
BREAKAGES = {
    "runner startup probe": (
        drop_probe("Deployment", SD15, "startupProbe"),
        f"Deployment {SD15}/runner: no startupProbe",
    ),
    "gateway readiness probe": (
        drop_probe("Deployment", GATEWAY, "readinessProbe"),
        f"Deployment {GATEWAY}/gateway: no readinessProbe",
    ),
    "redis liveness probe": (
        drop_probe("StatefulSet", REDIS, "livenessProbe"),
        f"StatefulSet {REDIS}/redis: no livenessProbe",
    ),
    "gateway memory limit": (
        drop_resource("Deployment", GATEWAY, "limits", "memory"),
        f"Deployment {GATEWAY}/gateway: no limits.memory",
    ),
    "runner cpu request": (
        drop_resource("Deployment", FLUX, "requests", "cpu"),
        f"Deployment {FLUX}/runner: no requests.cpu",
    ),
    "pull job memory limit": (
        drop_resource("Job", PULL, "limits", "memory"),
        f"Job {PULL}/pull: no limits.memory",
    ),
    "runner gpu": (
        drop_resource("Deployment", FLUX, "limits", "nvidia.com/gpu"),
        f"Deployment {FLUX}: asks for None nvidia.com/gpu",
    ),
    "root": (
        set_security("Deployment", GATEWAY, "runAsNonRoot", False),
        f"Deployment {GATEWAY}/gateway: may run as root",
    ),
    "writable root": (
        set_security("Deployment", SD15, "readOnlyRootFilesystem", False),
        f"Deployment {SD15}/runner: root file system not read-only",
    ),
    "escalation": (
        set_security("StatefulSet", REDIS, "allowPrivilegeEscalation", True),
        f"StatefulSet {REDIS}/redis: allowPrivilegeEscalation",
    ),
    "short startup probe": (
        lambda docs: container_of(docs, "Deployment", FLUX)["startupProbe"].update(
            failureThreshold=10
        ),
        f"Deployment {FLUX}: startup probe gives loading",
    ),
    "short grace": (
        shorten_grace(GATEWAY),
        f"Deployment {GATEWAY}/gateway: terminationGracePeriodSeconds 300",
    ),
    "no network policies": (
        drop_kind("NetworkPolicy"),
        f"Deployment {SD15}: no NetworkPolicy",
    ),
    "open runners": (open_runners, "lets pods other than the Gateway in"),
    "no disruption budgets": (
        drop_kind("PodDisruptionBudget"),
        f"Deployment {FLUX}: no PodDisruptionBudget",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_policy_finds_a_broken_copy(rendered, breakage):
    """Each check can fail: on a rendered copy with one thing removed, it names what broke."""
    docs = copy.deepcopy(rendered["gpu"])
    assert policy_violations(docs, gpu=True) == []
    break_it, named = BREAKAGES[breakage]
    break_it(docs)
    violations = policy_violations(docs, gpu=True)
    assert any(named in violation for violation in violations), violations


def test_gpu_outside_a_gpu_overlay_is_a_violation(rendered):
    docs = copy.deepcopy(rendered["cpu-tiny"])
    container_of(docs, "Deployment", SD15)["resources"]["limits"]["nvidia.com/gpu"] = 1
    assert any("outside a GPU overlay" in v for v in policy_violations(docs, gpu=False))


# --- the manifests against the code -----------------------------------------------------------


def bentoml_service_classes(module_file: Path) -> set[str]:
    """Classes in a module made BentoML services: decorated with `@bentoml.service(...)`, or
    assigned `Name = bentoml.service(...)(...)` (service.py, whose dependencies are attached
    first)."""
    tree = ast.parse(module_file.read_text())
    decorated = {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(
            "bentoml.service" in ast.unparse(decorator).split("(")[0]
            for decorator in node.decorator_list
        )
    }
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and ast.unparse(node.value).startswith("bentoml.service(")
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return decorated | assigned


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_serve_target_is_a_bentoml_service(rendered, overlay):
    targets = {
        container["command"][2]
        for workload in workloads(rendered[overlay])
        for container in pod_spec(workload)["containers"]
        if serves_depthid(container)
    }
    assert "service:Gateway" in targets and len(targets) == 4  # the Gateway and three runners
    for target in targets:
        module, cls = target.split(":")
        module_file = PROJECT_ROOT / (module.replace(".", "/") + ".py")
        assert module_file.is_file(), target
        assert cls in bentoml_service_classes(module_file), target


def metric_names() -> set[str]:
    return set(
        re.findall(r"\bdepthid_[a-z_]+\b", (PROJECT_ROOT / "gateway/metrics.py").read_text())
    )


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_autoscalers_read_the_job_queue_and_real_metrics(rendered, overlay):
    docs = rendered[overlay]
    scaled = [d for d in docs if d["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}]
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert {d["metadata"]["name"] for d in scaled} == deployments  # every Deployment scales
    used = set()
    for doc in scaled:
        for trigger in doc["spec"].get("triggers", []):
            if trigger["type"] == "redis":
                assert trigger["metadata"]["listName"] == QUEUE
            if trigger["type"] == "prometheus":
                used.update(re.findall(r"\bdepthid_[a-z_]+\b", trigger["metadata"]["query"]))
        for metric in doc["spec"].get("metrics", []):
            if metric["type"] == "External":
                used.add(metric["external"]["metric"]["name"])
    assert used and used <= metric_names()


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_prometheus_scrapes_the_gateway_and_runners(rendered, overlay):
    docs = rendered[overlay]
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    scraped = {
        service["metadata"]["labels"][COMPONENT]
        for service in docs
        if service["kind"] == "Service"
        and selects(monitor["spec"]["selector"], service["metadata"]["labels"])
        and any(
            p["name"] == monitor["spec"]["endpoints"][0]["port"] for p in service["spec"]["ports"]
        )
    }
    assert scraped == {"gateway", "runner"}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_laptop_example_keys_file_is_a_valid_keys_file(rendered):
    (secret,) = [d for d in rendered["cpu-tiny"] if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == API_KEYS_SECRET
    keys = KeysFile.model_validate_json(base64.b64decode(secret["data"][API_KEYS_SECRET_KEY])).keys
    assert hash_key(EXAMPLE_API_KEY) in {key.sha256 for key in keys}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_production_ships_no_api_keys(rendered, overlay):
    """The Secret is created by the operator (docs/deploy.md), never generated from an example."""
    assert not [d for d in rendered[overlay] if d["kind"] == "Secret"]


# --- the flux runner's GPU memory ----------------------------------------------------------------


def required_gpu_memory_mib(workload: dict[str, Any]) -> int | None:
    """The lower bound a workload's required node affinity puts on nvidia.com/gpu.memory."""
    affinity = pod_spec(workload).get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    bounds = [
        int(value)
        for term in terms.get("nodeSelectorTerms", [])
        for expression in term.get("matchExpressions", [])
        if expression["key"] == "nvidia.com/gpu.memory" and expression["operator"] == "Gt"
        for value in expression["values"]
    ]
    return min(bounds) if bounds else None


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_the_flux_runner_lands_on_a_gpu_with_room_for_its_weights(rendered, overlay):
    """Its bound (MiB) is above the flux runner's weights as computed from the real configs
    (benchmarks/gpu_memory.py), and the 48 GB cards (about 46000 MiB) pass it."""
    from benchmarks.gpu_memory import flux_parts, total_gib

    flux = find(rendered[overlay], "Deployment", "depthid-runner-flux-depth")
    bound = required_gpu_memory_mib(flux)
    assert bound is not None
    assert total_gib(flux_parts()) * 1024 < bound < 46_000
    assert pod_spec(flux)["nodeSelector"]  # and still on GPU nodes (runner-gpu.yaml)


def test_the_cpu_overlay_asks_for_no_gpu_memory(rendered):
    for workload in workloads(rendered["cpu-tiny"]):
        assert required_gpu_memory_mib(workload) is None


# The models each runner Deployment serves (service.py's runner clients).
RUNNER_MODELS = {
    "depthid-runner-sd15-depth": {"sd1.5-controlnet-depth"},
    "depthid-runner-flux-depth": {"flux-depth-pro"},
    "depthid-runner-instantid": {"instantid", "insta-depth"},
}


def models_read(query: str) -> set[str]:
    """The model label values a PromQL query selects (model="a" or model=~"a|b")."""
    models: set[str] = set()
    for operator, value in re.findall(r'model\s*(=~|=)\s*"([^"]*)"', query):
        models |= set(value.split("|")) if operator == "=~" else {value}
    return models


def selector_models(selector: dict[str, Any]) -> set[str]:
    models = {selector.get("matchLabels", {}).get("model")} - {None}
    for expression in selector.get("matchExpressions", []):
        if expression["key"] == "model" and expression["operator"] == "In":
            models |= set(expression["values"])
    return models


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_each_runner_scales_on_its_own_models_queue_and_in_flight(rendered, overlay):
    docs = rendered[overlay]
    for name, models in RUNNER_MODELS.items():
        (scaler,) = [
            d
            for d in docs
            if d["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}
            and d["metadata"]["name"] == name
        ]
        read: dict[str, set[str]] = {}  # metric -> the models it is read for
        for trigger in scaler["spec"].get("triggers", []):
            assert trigger["type"] != "redis", "the shared list holds every model's jobs"
            if trigger["type"] == "prometheus":
                query = trigger["metadata"]["query"]
                for metric in re.findall(r"\bdepthid_[a-z_]+\b", query):
                    read.setdefault(metric, set()).update(models_read(query))
        for metric in scaler["spec"].get("metrics", []):
            if metric["type"] == "External":
                external = metric["external"]["metric"]
                models_of = selector_models(external.get("selector", {}))
                read.setdefault(external["name"], set()).update(models_of)
        expected = {"depthid_queue_depth": models, "depthid_in_flight": models}
        if name in scaled_to_zero(docs):  # woken by the requests waiting for it
            expected["depthid_waiting_for_runner"] = models
        assert read == expected, name


def scaled_to_zero(docs: list[dict[str, Any]]) -> set[str]:
    """The runner Deployments the Gateway's settings say may scale to zero."""
    (gateway,) = [w for w in workloads(docs) if pod_labels(w).get(COMPONENT) == "gateway"]
    env = environment(pod_spec(gateway)["containers"][0], docs)
    names = Settings(scale_to_zero_runners=env.get("DEPTHID_SCALE_TO_ZERO_RUNNERS", ""))
    return {RUNNER_DEPLOYMENTS[name] for name in names.scale_to_zero_runners}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_a_runner_scales_to_zero_exactly_when_the_gateway_waits_for_it(rendered, overlay):
    """minReplicaCount 0 only for the runners the Gateway waits for (else a request for one at
    zero would answer 502 at once and never wake it), and each of those is woken by its own
    models' waiting requests."""
    docs = rendered[overlay]
    at_zero = {
        d["spec"]["scaleTargetRef"]["name"]
        for d in docs
        if d["kind"] == "ScaledObject" and d["spec"].get("minReplicaCount", 1) == 0
    }
    assert at_zero == scaled_to_zero(docs)
    if overlay == "gpu-scale-to-zero":
        assert at_zero == {"depthid-runner-flux-depth"}


def test_the_service_monitor_keeps_exactly_the_route_templates(rendered):
    """metricRelabelings: a bentoml_* series survives only with a route template's endpoint."""
    (monitor,) = [d for d in rendered["gpu"] if d["kind"] == "ServiceMonitor"]
    mark, drop, cleanup = monitor["spec"]["endpoints"][0]["metricRelabelings"]
    known = re.compile(mark["regex"])  # Prometheus anchors it; fullmatch below does too
    for template in route_templates.templates():
        assert known.fullmatch(template), template
    for raw in ("/v2/requests/0a1b2c/status", "/v2/requests/0a1b2c", "/wp-login.php", "/v3/x"):
        assert not known.fullmatch(raw), raw
    assert mark["targetLabel"] == drop["sourceLabels"][-1] == cleanup["regex"]
    assert drop["action"] == "drop" and cleanup["action"] == "labeldrop"
    drop_rule = re.compile(drop["regex"])
    assert drop_rule.fullmatch("bentoml_service_request_total;/v2/requests/0a1b/status;")
    assert not drop_rule.fullmatch("bentoml_service_request_total;/v2/{model};known")
    assert not drop_rule.fullmatch("depthid_requests_total;;")


# --- start-up sized from the measured time to ready ----------------------------------------------


def test_the_documented_times_to_ready_are_derived_from_the_measured_run():
    """docs/deploy.md's table of times to ready and startup probe budgets is what the measured
    run it quotes gives (benchmarks/cold_start.py's derivation)."""
    text = DEPLOY_DOC.read_text()
    for runner, ready in time_to_ready_s().items():
        row = re.search(rf"^\| {runner} \| [^|]+ \| (\d+) s \| (\d+) s \|", text, re.MULTILINE)
        assert row, f"docs/deploy.md has no row for {runner}"
        assert (int(row[1]), int(row[2])) == (round(ready), round(PROBE_MARGIN * ready)), runner


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_each_runner_s_startup_probe_is_sized_from_its_time_to_ready(rendered, overlay):
    """At least PROBE_MARGIN times the runner's derived time to ready, and within one probe
    period of it: sized from it, not padded."""
    for runner, deployment in RUNNER_DEPLOYMENTS.items():
        probe = container_of(rendered[overlay], "Deployment", deployment)["startupProbe"]
        needed = PROBE_MARGIN * time_to_ready_s()[runner]
        budget = probe_budget_s(probe)
        assert needed <= budget < needed + probe.get("periodSeconds", 10), (runner, budget)


def seconds(duration: str) -> float:
    """A Prometheus duration such as "15s" or "1m"."""
    value, unit = re.fullmatch(r"(\d+)([sm])", duration).groups()
    return float(value) * (60 if unit == "m" else 1)


def test_the_scale_to_zero_deadline_covers_a_wake_and_a_generation(rendered):
    """A request for a runner at zero waits, within its one deadline, for Prometheus to see it
    (scrape interval), KEDA to act (polling), the pod to start, the runner's whole startup
    probe budget and one readiness period, then for its generation (the release gate's p95):
    the deadline covers that sum, rounded up by less than DEADLINE_ROUNDING_S."""
    docs = rendered["gpu-scale-to-zero"]
    gateway = container_of(docs, "Deployment", GATEWAY)
    deadline = setting(environment(gateway, docs), "generation_timeout_s")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    scrape = seconds(monitor["spec"]["endpoints"][0]["interval"])
    p95 = tomllib.loads(THRESHOLDS.read_text())["release"]["max_p95_ms_by_model"]
    at_zero = scaled_to_zero(docs)
    assert at_zero
    for deployment in at_zero:
        runner = container_of(docs, "Deployment", deployment)
        polling = find(docs, "ScaledObject", deployment)["spec"]["pollingInterval"]
        generation = max(p95[model] for model in RUNNER_MODELS[deployment]) / 1000
        needed = (
            scrape
            + polling
            + POD_START_S
            + probe_budget_s(runner["startupProbe"])
            + runner["readinessProbe"]["periodSeconds"]
            + generation
        )
        assert needed <= deadline < needed + DEADLINE_ROUNDING_S, (deployment, needed)

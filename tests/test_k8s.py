"""The Kubernetes manifests in k8s/: valid against the schemas, offline, and true to the code.

Every resource is validated against Kubernetes' own schemas (kubernetes-validate
ships them) and the ScaledObject against KEDA's CRD, vendored in
k8s/schemas/. Then the commands, environment and ports are checked against
the real ones: compose's commands, the CLI's parser, the metrics and probe
settings, the worker's shutdown deadline, and the secrets the docs create.
Finally the exporter's command runs as its pod would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from celery_batching.deploy.cli import build_parser
from celery_batching.worker import consumer, probes
from celery_batching.worker.metrics import PORT_ENV
from tests.servers import ROOT, free_port, stop_process, wait_until
from tests.test_docker_compose import command as compose_command

K8S = ROOT / "k8s"
# The Kubernetes version whose schemas the manifests must satisfy.
KUBERNETES_VERSION = "1.30.0"
KEDA_CRD = K8S / "schemas" / "keda.sh_scaledobjects.yaml"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and "schemas" not in p.parts)


def resources() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind: str, name: str) -> dict:
    (found,) = [doc for _, doc in resources() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def container(name: str) -> dict:
    (only,) = resource("Deployment", name)["spec"]["template"]["spec"]["containers"]
    return only


def env_of(spec: dict) -> dict[str, object]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in spec.get("env", [])}


# -- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_resource_is_valid_against_its_schema(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] == "ScaledObject":
            validate_scaled_object(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def validate_scaled_object(doc: dict) -> None:
    crd = next(d for d in yaml.safe_load_all(KEDA_CRD.read_text()) if d)
    (version,) = [v for v in crd["spec"]["versions"] if f"keda.sh/{v['name']}" == doc["apiVersion"]]
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.validate(doc, schema)
    unknown(doc["spec"], schema["properties"]["spec"], "spec")


def unknown(value: object, schema: dict, where: str) -> None:
    """Strict as the API server is for a CRD: no field the schema does not name."""
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            assert key in schema["properties"], f"{where}.{key} is not in KEDA's ScaledObject schema"
            unknown(item, schema["properties"][key], f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            unknown(item, schema["items"], f"{where}[{index}]")


def test_a_wrong_field_is_caught_by_both_validations():
    deployment = resource("Deployment", "worker-embed")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    scaled = resource("ScaledObject", "worker-embed")
    with pytest.raises(AssertionError, match=r"spec\.minReplicas is not in KEDA"):
        validate_scaled_object({**scaled, "spec": {**scaled["spec"], "minReplicas": 1}})


def test_each_kustomization_lists_exactly_its_directory():
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text()).get("resources", [])
        for entry in listed:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry} does not exist"
        local = {p.name for p in kustomization.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert local == {entry for entry in listed if not entry.startswith("..")}, kustomization


# -- true to the code ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_web_and_worker_run_the_compose_commands(compose):
    assert container("web")["command"] == compose_command(compose, "web")
    worker = container("worker-embed")["command"]
    expected = compose_command(compose, "worker-gpu0")
    expected[expected.index("-n") + 1] = "embed@%h"  # the pod's host name tells workers apart
    assert worker == expected
    flower = compose_command(compose, "flower", references=True)
    assert container("flower")["command"] == [
        arg.replace("$FLOWER_BASIC_AUTH", "$(FLOWER_BASIC_AUTH)") for arg in flower
    ]


def test_the_gpu_worker_serves_its_probes_and_metrics_on_its_metrics_port():
    spec = container("worker-embed")
    env = env_of(spec)
    (port,) = spec["ports"]
    assert env[PORT_ENV] == str(port["containerPort"])
    assert spec["startupProbe"]["httpGet"]["path"] == probes.LIVE_PATH
    assert spec["livenessProbe"]["httpGet"]["path"] == probes.LIVE_PATH
    assert spec["readinessProbe"]["httpGet"]["path"] == probes.READY_PATH
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"]["port"] == port["name"]
    annotations = resource("Deployment", "worker-embed")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == probes.METRICS_PATH


def test_one_gpu_per_worker_pod_and_a_grace_period_for_its_warm_shutdown():
    pod = resource("Deployment", "worker-embed")["spec"]["template"]["spec"]
    spec = container("worker-embed")
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(spec)["CELERY_BATCHING_DEVICE"] == "cuda:0"
    # The worker is the container's process (no shell in between), so SIGTERM reaches it
    assert spec["command"][0] == "celery" and "sh" not in spec["command"]
    # Longer than storing a batch may take (the writer's retry deadline), with room for the batch itself
    assert pod["terminationGracePeriodSeconds"] >= 2 * consumer.SHUTDOWN_WRITE_DEADLINE_SECONDS
    module = env_of(spec)["CELERY_CONFIG_MODULE"]
    config = __import__(str(module), fromlist=["_"])
    assert pod["terminationGracePeriodSeconds"] < config.broker_transport_options["visibility_timeout"]


def test_the_exporter_command_is_the_clis_and_its_ports_agree():
    spec = container("exporter")
    argv = spec["command"]
    assert argv[0] == "celery-batching"
    assert "celery-batching" in (ROOT / "pyproject.toml").read_text()
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.app) == ("exporter", "django_demo")
    (port,) = spec["ports"]
    assert args.port == port["containerPort"]
    assert spec["readinessProbe"]["httpGet"]["path"] == probes.READY_PATH
    assert spec["livenessProbe"]["httpGet"]["path"] == probes.LIVE_PATH
    service = resource("Service", "exporter")["spec"]["ports"][0]
    assert service["port"] == args.port


def test_the_scaled_object_scales_the_worker_on_the_depth_metric():
    scaled = resource("ScaledObject", "worker-embed")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "worker-embed"
    assert 0 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    # Scale-down waits longer than a model takes to load
    assert (
        scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        >= 300
    )
    queries = [trigger["metadata"]["query"] for trigger in scaled["triggers"] if trigger["type"] == "prometheus"]
    assert any("celery_batching_queue_depth{" in q and 'queue="embed"' in q for q in queries)
    assert any("celery_batching_oldest_waiting_seconds{" in q for q in queries)
    worker = container("worker-embed")["command"]
    assert worker[worker.index("-Q") + 1] == "embed"


def test_every_secret_a_pod_reads_is_one_the_docs_create():
    documented = (ROOT / "docs" / "deployment.md").read_text()
    (create,) = [line for line in documented.splitlines() if line.startswith("kubectl create secret generic")]
    references = {
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for _, doc in resources()
        if doc["kind"] == "Deployment"
        for spec in doc["spec"]["template"]["spec"]["containers"]
        for item in spec.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert references
    for name, key in references:
        assert f"generic {name} " in create and f"--from-literal={key}=" in create, (name, key)


def test_the_exporter_pod_command_serves_the_depth(redis_server):
    # Given the exporter's container command and environment, against the test's Redis
    spec = container("exporter")
    config = resource("ConfigMap", "celery-batching")["data"]
    port = free_port()
    argv = [*spec["command"][1:-1], str(port), "--addr", "127.0.0.1"]
    env = {
        **os.environ,
        **config,
        "CELERY_CONFIG_MODULE": str(env_of(spec)["CELERY_CONFIG_MODULE"]),
        "DJANGO_SECRET_KEY": "k8s-test-key",
        "REDIS_URL": redis_server.url(0),
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen([sys.executable, "-m", "celery_batching", *argv], env=env, cwd=ROOT)
    try:
        # When it has started, Then it is ready and exports the demo's queue
        wait_until(lambda: _get(port, "/ready") == "ready\n", 60, "the exporter to be ready")
        assert 'celery_batching_queue_depth{queue="embed",state="waiting"}' in _get(port, "/metrics")
    finally:
        stop_process(process)
    assert process.returncode == 0  # SIGTERM stops it cleanly


def _get(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.read().decode()
    except OSError:
        return None

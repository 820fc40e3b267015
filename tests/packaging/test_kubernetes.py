"""docker/kubernetes/: the core kinds validate against the Kubernetes schemas (kubernetes-validate, offline,
strict: unknown fields are errors), and what the manifests promise matches the code: probe paths and ports against
the status endpoint, the prefetch Job's command against the CLI, the environment against the settings, the grace
period against the shutdown budget, and the KEDA trigger against the Deployment."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from supervisor.cli import build_parser
from supervisor.plan import HardwareOptions, load_context
from supervisor.plan.hardware import parse_size
from supervisor.plan import load_settings
from supervisor.run.status import Status, StatusServer

from .files import reference

KUBE = Path(__file__).resolve().parents[2] / "docker" / "kubernetes"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
GIB = 1024**3


def load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]
    return doc


def kustomization() -> dict[str, Any]:
    return load("kustomization.yaml")


def resources() -> dict[str, dict[str, Any]]:
    """kind -> manifest, for everything the kustomization applies."""
    docs = [load(name) for name in kustomization()["resources"]]
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), "one manifest per kind here"
    return kinds


def container(kind: str) -> dict[str, Any]:
    spec = resources()[kind]["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return only


def env() -> dict[str, str]:
    return resources()["ConfigMap"]["data"]


def test_every_yaml_file_is_applied_or_documented_as_separate():
    listed = set(kustomization()["resources"])
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert {p.relative_to(KUBE).as_posix() for p in KUBE.rglob("*.yaml")} - present - {"kustomization.yaml"} == {
        "autoscaling/keda-scaledobject.yaml"}
    assert kustomization()["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    (image,) = kustomization()["images"]
    assert {c["image"] for c in (container("Deployment"), container("Job"))} == {image["name"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", [n for n in yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]])
def test_manifests_validate_against_the_kubernetes_schemas(name, version):
    kubernetes_validate.validate(load(name), version, strict=True)


def test_a_schema_violation_is_caught():
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_environment_is_variables_the_code_reads_with_valid_values():
    data = env()
    assert set(data) <= set(reference()), set(data) - set(reference())
    settings = load_settings(data)  # raises ConfigError on a bad value
    assert str(settings.models_dir) == "/models"


def _port(name: str) -> int:
    (port,) = [p["containerPort"] for p in container("Deployment")["ports"] if p["name"] == name]
    return port


def test_probes_ask_the_status_endpoint_where_the_supervisor_serves_it():
    host, port = load_settings(env()).status_addr
    # The kubelet probes the pod's address from the node: loopback (the default STATUS_ADDR) would never answer.
    assert host in ("0.0.0.0", "::")
    c = container("Deployment")
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: (p["path"], _port(p["port"])) for kind, p in probes.items()} == {
        "startupProbe": ("/readyz", port), "readinessProbe": ("/readyz", port), "livenessProbe": ("/healthz", port)}


def test_the_probe_paths_answer_on_the_real_status_endpoint_as_the_probes_expect():
    status = Status()
    server = StatusServer(("127.0.0.1", 0), status)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        c = container("Deployment")
        ready_path, live_path = c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]
        status.beat()
        assert httpx.get(base + ready_path, trust_env=False).status_code == 503  # fetching: not ready yet
        assert httpx.get(base + live_path, trust_env=False).status_code == 200  # but alive
        status.set(ready=True, not_ready=[])
        assert httpx.get(base + ready_path, trust_env=False).status_code == 200
        status.set(live=False)
        assert httpx.get(base + live_path, trust_env=False).status_code == 503
    finally:
        server.server_close()


def test_the_startup_probe_leaves_time_for_a_cold_fetch_and_the_grace_period_covers_the_drain():
    probe = container("Deployment")["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 3600
    settings = load_settings(env())
    grace = resources()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert settings.drain_timeout > 0
    assert grace >= settings.drain_timeout + settings.shutdown_grace + 10


def test_the_deployment_asks_for_a_gpu_and_mounts_the_shared_models_volume():
    deployment, pvc = resources()["Deployment"], resources()["PersistentVolumeClaim"]
    c = container("Deployment")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts[env()["MODELS_DIR"]]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert build_parser().parse_args(c["args"]).command == "run"


def test_the_prefetch_job_fetches_the_pods_plan_onto_the_same_volume():
    job, deployment = container("Job"), container("Deployment")
    args = build_parser().parse_args(job["args"])
    assert args.command == "fetch" and not args.dry_run
    assert job["envFrom"] == deployment["envFrom"]
    job_volumes = {v["name"]: v for v in resources()["Job"]["spec"]["template"]["spec"]["volumes"]}
    (mount,) = job["volumeMounts"]
    assert mount["mountPath"] == env()["MODELS_DIR"]
    assert job_volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "comfyui-models"
    assert "nvidia.com/gpu" not in job["resources"].get("limits", {})
    # It plans for the pods' hardware: their memory limit, and a GPU the planner knows.
    assert parse_size(args.ram) == parse_size(deployment["resources"]["limits"]["memory"].replace("Gi", "GiB"))
    ctx = load_context(env(), HardwareOptions(gpu=args.gpu, ram=args.ram, disk="1TiB"))  # the PVC, not this disk
    plan = ctx.plan()
    assert plan.runnable and plan.model("steadydancer").knobs is not None


def test_the_service_reaches_the_named_ports_of_the_pods():
    service = resources()["Service"]
    labels = resources()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in container("Deployment")["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert service["spec"]["sessionAffinity"] == "ClientIP"


def test_keda_scales_the_deployment_on_the_queue_metric():
    scaled = load("autoscaling/keda-scaledobject.yaml")
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == resources()["Deployment"]["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "comfyui_queue_pending" in trigger["metadata"]["query"]
    assert isinstance(trigger["metadata"]["threshold"], str)  # KEDA's metadata values are strings
    annotations = resources()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == _port("status")


def test_the_readme_commands_name_these_files():
    readme = (KUBE.parents[1] / "README.md").read_text()
    section = readme.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    assert "kubectl apply -k docker/kubernetes" in section
    assert "docker/kubernetes/autoscaling/keda-scaledobject.yaml" in section
    assert "kubectl create secret generic comfyui-secrets" in section
    for line in section.splitlines():
        if line.strip().startswith("supervisor "):
            build_parser().parse_args(shlex.split(line.strip())[1:])

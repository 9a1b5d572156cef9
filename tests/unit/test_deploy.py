"""The deployment files hold together: the compose file is valid against the Compose
specification (check-jsonschema's vendored schema, offline), and Prometheus scrapes every
Parley service the compose stack runs, on the port it serves /metrics on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "stt", "llm", "tts", "storage")


def test_compose_files_follow_the_compose_specification():
    tool = shutil.which("check-jsonschema")
    assert tool, "check-jsonschema comes with the test extra"
    files = [str(ROOT / "docker-compose.yml"), str(ROOT / "docker-compose.gpu.yml")]
    run = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", *files], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_service_has_its_own_image_and_runs_as_non_root():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in SERVICES:
        dockerfile = compose[name]["build"]["dockerfile"]
        assert dockerfile == f"deploy/docker/{name}.Dockerfile"
        text = (ROOT / dockerfile).read_text()
        assert "USER parley" in text and "useradd" in text
        assert ("nvidia/cuda" in text) == (name in ("stt", "tts")), name
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    for name in ("stt", "tts"):
        assert gpu[name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_env_example_lists_every_setting():
    from services.common.settings import ServiceSettings
    from services.gateway.config import GatewaySettings
    from services.llm.config import LlmSettings
    from services.storage.config import StorageSettings
    from services.stt.config import SttSettings
    from services.tts.config import TtsSettings

    listed = (ROOT / ".env.example").read_text()
    missing = [
        f"PARLEY_{name.upper()}"
        for cls in (ServiceSettings, GatewaySettings, LlmSettings, SttSettings, TtsSettings, StorageSettings)
        for name in cls.model_fields
        if f"PARLEY_{name.upper()}=" not in listed
    ]
    assert missing == []


def test_prometheus_scrapes_every_service_the_compose_stack_runs():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    for name in SERVICES:
        port = compose[name]["environment"]["PARLEY_HTTP_PORT"]
        assert f"{name}:{port}" in targets, f"{name}:{port} is not scraped"
        assert compose[name]["healthcheck"], f"{name} has no healthcheck"
    assert "nats-exporter:7777" in targets and "nats-exporter" in compose


K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31"
DEPLOYMENTS = {f"parley-{name}" for name in SERVICES}


def _render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: scripts/setup installs Debian's kubernetes-client"
    run = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_of_every_overlay_is_valid_kubernetes(overlay):
    import kubernetes_validate

    docs = _render(overlay)
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
        assert doc["metadata"]["namespace"] == ("parley-dev" if overlay == "dev" else "parley")
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below against the objects it names
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)

    assert set(by_kind["Deployment"]) == DEPLOYMENTS
    assert set(by_kind["PodDisruptionBudget"]) == DEPLOYMENTS
    assert "parley-migrate" in by_kind["Job"] and "parley-config" in by_kind["ConfigMap"]
    for name, deployment in by_kind["Deployment"].items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] > 30  # above PARLEY_DRAIN_TIMEOUT_S
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"  # covers model loading
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert {"configMapRef": {"name": "parley-config"}} in container["envFrom"]
        gpu = "nvidia.com/gpu" in container["resources"]["limits"]
        assert gpu == (overlay == "prod" and name in ("parley-stt", "parley-tts")), name
        assert name in by_kind["Service"]

    if overlay == "prod":
        scaled = by_kind["ScaledObject"]
        assert set(scaled) == {"parley-llm", "parley-tts", "parley-storage", "parley-stt"}
        for obj in scaled.values():
            assert obj["spec"]["scaleTargetRef"]["name"] in DEPLOYMENTS
            (trigger,) = obj["spec"]["triggers"]
            assert trigger["type"] in ("nats-jetstream", "prometheus")
        consumers = {
            o["spec"]["triggers"][0]["metadata"]["consumer"]
            for o in scaled.values()
            if o["spec"]["triggers"][0]["type"] == "nats-jetstream"
        }
        assert consumers == {"llm", "tts", "storage"}  # the durable names the workers pull with
        assert (
            by_kind["HorizontalPodAutoscaler"]["parley-gateway"]["spec"]["scaleTargetRef"]["name"] == "parley-gateway"
        )

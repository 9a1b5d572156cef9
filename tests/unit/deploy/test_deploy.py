"""The deployment files hold together: the compose file is valid against the Compose
specification (check-jsonschema's vendored schema, offline), Prometheus scrapes every
Parley service the compose stack runs, on the port it serves /metrics on, and compose and
Kubernetes both run the one NATS users file with each service as its own user."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
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
        env = compose[name]["environment"]
        port = env.get("PARLEY_OPS_PORT", env["PARLEY_HTTP_PORT"])
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


NATS_DIR = ROOT / "deploy" / "nats"


def _nats_users() -> dict[str, str]:
    """Each user of deploy/nats/parley-auth.conf and the environment variable holding its password."""
    text = (NATS_DIR / "parley-auth.conf").read_text()
    return dict(re.findall(r"^\s*user:\s*(\w+)\s*\n\s*password:\s*\$(\w+)", text, re.MULTILINE))


def test_the_nats_config_is_valid_and_needs_every_password():
    """nats-server itself parses the compose config with its users; without a password it refuses to start."""
    from ops.devstack import _nats_binary

    users = _nats_users()
    assert set(users) == {*SERVICES, "ops"}
    conf = str(NATS_DIR / "nats.conf")
    env = {"PATH": "/usr/bin:/bin", **{var: "x" for var in users.values()}}
    ok = subprocess.run([_nats_binary(), "-t", "-c", conf], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    env.pop(users["tts"])
    missing = subprocess.run([_nats_binary(), "-t", "-c", conf], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and users["tts"] in missing.stdout + missing.stderr


NATS_NODES = ("nats-1", "nats-2", "nats-3")


def test_compose_runs_that_nats_config_and_gives_each_service_its_own_user():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    users = _nats_users()
    nats = compose["nats-1"]
    for node in NATS_NODES:
        assert "./deploy/nats:/etc/nats/parley:ro" in compose[node]["volumes"]
        assert compose[node]["command"][:2] == ["-c", "/etc/nats/parley/nats.conf"]
        assert compose[node]["environment"] == nats["environment"]
    assert set(nats["environment"]) == set(users.values())
    for name in SERVICES:
        env = compose[name]["environment"]
        assert env["PARLEY_NATS_USER"] == name
        assert env["PARLEY_NATS_PASSWORD"] == nats["environment"][users[name]]  # the same variable from .env
        assert f"{users[name]}=" in (ROOT / ".env.example").read_text()


def test_kubernetes_includes_that_nats_config_and_gives_each_service_its_own_user():
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    users = _nats_users()
    includes = [v for k, v in values["config"]["merge"].items() if k.endswith("$include")]
    assert includes == ["parley-auth.conf"]
    set_file = "--set-file 'configMap.merge.data.parley-auth\\.conf=deploy/nats/parley-auth.conf'"
    assert set_file in (K8S / "README.md").read_text() and set_file in (K8S / "nats-values.yaml").read_text()
    server_env = values["container"]["env"]
    assert set(server_env) == set(users.values())
    for user, var in users.items():
        assert server_env[var] == {"valueFrom": {"secretKeyRef": {"name": "parley-nats", "key": user}}}
    for overlay in ("dev", "prod"):
        for doc in _render(overlay):
            if doc["kind"] != "Deployment":
                continue
            name = doc["metadata"]["name"].removeprefix("parley-")
            env = {e["name"]: e for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["PARLEY_NATS_USER"]["value"] == name
            assert env["PARLEY_NATS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "parley-nats", "key": name}}


def test_every_deployment_runs_a_three_node_cluster_with_three_replicas_synced_to_disk():
    """Compose and Kubernetes run what the cluster fault tests run (tests/e2e/test_cluster_faults.py):
    three nats-servers in one cluster, every write synced before it is acknowledged, and the
    services declaring three replicas of every stream and bucket, reaching every node."""
    conf = (NATS_DIR / "nats.conf").read_text()
    assert re.search(r"jetstream\s*\{[^}]*sync_interval:\s*always", conf)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    routes = ",".join(f"nats://{node}:6222" for node in NATS_NODES)
    for node in NATS_NODES:
        args = compose[node]["command"]
        flags = dict(zip(args[::2], args[1::2], strict=True))
        assert flags["--name"] == node and flags["--cluster_name"] == "parley" and flags["--routes"] == routes
        assert compose[node]["volumes"][0] == f"{node}:/data"  # a store of its own
    for name in SERVICES:
        env = compose[name]["environment"]
        assert env["PARLEY_NATS_REPLICAS"] == "3"
        assert env["PARLEY_NATS_URL"] == ",".join(f"nats://{node}:4222" for node in NATS_NODES)
        assert set(NATS_NODES) <= set(compose[name]["depends_on"])
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())["config"]
    assert values["cluster"] == {"enabled": True, "replicas": 3}
    assert values["jetstream"]["merge"]["sync_interval"] == "always"
    for overlay in ("dev", "prod"):
        configs = [d for d in _render(overlay) if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("config")]
        assert configs and all(d["data"]["PARLEY_NATS_REPLICAS"] == "3" for d in configs)

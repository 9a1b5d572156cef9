"""The deployment files hold together: the compose file is valid against the Compose
specification (check-jsonschema's vendored schema, offline), and Prometheus scrapes every
Parley service the compose stack runs, on the port it serves /metrics on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "stt", "llm", "tts", "storage")


def test_compose_file_follows_the_compose_specification():
    tool = shutil.which("check-jsonschema")
    assert tool, "check-jsonschema comes with the test extra"
    run = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_prometheus_scrapes_every_service_the_compose_stack_runs():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    for name in SERVICES:
        port = compose[name]["environment"]["PARLEY_HTTP_PORT"]
        assert f"{name}:{port}" in targets, f"{name}:{port} is not scraped"
        assert compose[name]["healthcheck"], f"{name} has no healthcheck"
    assert "nats-exporter:7777" in targets and "nats-exporter" in compose

"""The shipped Prometheus config and alert rules pass promtool, and a real Prometheus
(Debian's package) scraping the test stack answers every query of the Grafana dashboard
with data after a spoken turn."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ops import devstack
from tests.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: scripts/setup installs Debian's prometheus package"
    return path


def test_prometheus_config_and_alert_rules_pass_promtool():
    promtool = _tool("promtool")
    for args in (
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
    ):
        run = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "parley.json").read_text())
    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in sources["datasources"]}
    assert dashboard["uid"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert panel["targets"]


@pytest.fixture
def prometheus(stack, tmp_path):
    """Prometheus scraping every service of the test stack once a second."""
    binary = _tool("prometheus")
    targets = [
        {"targets": [f"127.0.0.1:{proc.port}"], "labels": {"service": name}} for name, proc in stack["procs"].items()
    ]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "parley", "static_configs": targets}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = devstack.free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=open(tmp_path / "prometheus.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        try:
            if httpx.get(f"{url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "prometheus did not become ready"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


async def test_every_dashboard_query_returns_data(stack, prometheus, speech_wav, fake_llm):
    async with httpx.AsyncClient(base_url=prometheus, trust_env=False) as http:
        for _ in range(100):  # every service scraped at least twice
            up = (await http.get("/api/v1/query", params={"query": "count_over_time(up[1m])"})).json()
            counts = [float(r["value"][1]) for r in up["data"]["result"]]
            if len(counts) == len(stack["procs"]) and min(counts) >= 2:
                break
            await asyncio.sleep(0.2)

        client = Client(stack["ws_url"])
        await client.connect(user="observability")
        await client.stream_wav(speech_wav)
        stored = (await client.wait_for(lambda r: r.events("audio.stored"), 180))[0]
        await client.report_latency(stored["message_id"])
        await asyncio.sleep(0.5)
        assert client.received.events("error") == []  # the report was taken
        await client.close()
        await asyncio.sleep(2.5)  # the turn's last counts scraped

        dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "parley.json").read_text())
        empty = []
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "2m")
                body = (await http.get("/api/v1/query", params={"query": expr})).json()
                assert body["status"] == "success", f"{panel['title']}: {body}"
                values = [float(r["value"][1]) for r in body["data"]["result"]]
                if not any(math.isfinite(v) for v in values):
                    empty.append(f"{panel['title']}: {expr}")
        assert empty == [], "queries with no data:\n" + "\n".join(empty)

"""Each service is its own process: ready only when started, and gone cleanly on SIGTERM."""

from __future__ import annotations

import signal

import httpx
import pytest

from ops import devstack

pytestmark = [pytest.mark.e2e, pytest.mark.engine]


@pytest.mark.parametrize("name", devstack.SERVICES)
def test_service_serves_health_metrics_and_drains_on_sigterm(stack, name, tmp_path):
    proc = devstack.ServiceProcess(name, stack["env"], tmp_path / f"{name}.log").start()
    try:
        proc.wait_ready()
        assert httpx.get(f"{proc.base_url}/healthz").status_code == 200
        ready = httpx.get(f"{proc.base_url}/readyz")
        assert ready.status_code == 200 and ready.json()["service"] == name
        metrics = httpx.get(f"{proc.base_url}/metrics").text
        assert "parley_stage_seconds" in metrics
    finally:
        code = proc.stop(signal.SIGTERM)
    log = (tmp_path / f"{name}.log").read_text()
    assert code == 0, log[-2000:]
    assert f"{name} draining" in log and f"{name} stopped" in log

"""`forward --from-nats ... --metrics-port`: the JetStream forwarder serves /metrics and
/healthz like every other source (the compose file's forwarders rely on it)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.backends import free_port, nats_or_skip
from tests.conftest import APP_ID
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
def test_the_jetstream_forwarder_serves_metrics_and_healthz(tmp_path):
    nats_url = nats_or_skip()  # the real server (a failure, not a skip, under CI=true)
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
           "CONNECTOR_HOME": str(tmp_path / "home"), "MOESIF_APPLICATION_ID": APP_ID,
           "MOESIF_COLLECTOR_URL": f"http://127.0.0.1:{free_port()}"}
    stream = f"TEST_METRICS_{secrets.token_hex(4).upper()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector", "forward", "--from-nats", nats_url,
         "--stream", stream, "--durable", "d", "--metrics-port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def scrape() -> requests.Response | None:
        try:
            return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        except requests.ConnectionError:
            assert proc.poll() is None, proc.communicate()
            return None

    try:
        metrics = wait_until(scrape, 30, "the forwarder's /metrics")
        assert metrics.status_code == 200 and "moesif_forward_events_total" in metrics.text
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert health.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    # 0 once the bridge's signal helper is installed (a SIGTERM while it still connects
    # ends the process by the signal itself); what this test checks is the port.
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert APP_ID not in out + err

"""`forward --from-nats ... --metrics-port`: the JetStream forwarder serves /metrics and
/healthz like every other source (the compose file's forwarders rely on it)."""

from __future__ import annotations

import asyncio
import contextlib
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


async def _stream_for_default_subjects(url: str) -> tuple[str, bool]:
    """The stream a `--from-nats` forwarder may use on this server: the one that already
    holds `apim.analytics.>` (streams cannot overlap), else a new one (True: delete it)."""
    import nats

    nc = await nats.connect(url)
    try:
        try:
            return str(await nc.jetstream().find_stream_name_by_subject("apim.analytics.x")), False
        except Exception:  # noqa: BLE001 - no stream holds them
            return f"TEST_METRICS_{secrets.token_hex(4).upper()}", True
    finally:
        await nc.close()


async def _clean_up(url: str, stream: str, durable: str, created: bool) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        if created:
            await nc.jetstream().delete_stream(stream)
        else:
            await nc.jetstream().delete_consumer(stream, durable)
    finally:
        await nc.close()


def test_the_jetstream_forwarder_serves_metrics_and_healthz(tmp_path):
    nats_url = nats_or_skip()  # the real server (a failure, not a skip, under CI=true)
    stream, created = asyncio.run(_stream_for_default_subjects(nats_url))
    durable = f"d{secrets.token_hex(4)}"
    try:
        _serves_metrics_and_healthz(tmp_path, nats_url, stream, durable)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(_clean_up(nats_url, stream, durable, created))


def _serves_metrics_and_healthz(tmp_path: Path, nats_url: str, stream: str,
                                durable: str) -> None:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
           "CONNECTOR_HOME": str(tmp_path / "home"), "MOESIF_APPLICATION_ID": APP_ID,
           "MOESIF_COLLECTOR_URL": f"http://127.0.0.1:{free_port()}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector", "forward", "--from-nats", nats_url,
         "--stream", stream, "--durable", durable, "--metrics-port", str(port)],
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

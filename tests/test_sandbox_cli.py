"""`moesif-segment sandbox`: export lines that point a real check at all three peers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from pydantic import SecretStr

from connector.ops.checks import Scope, scoped_checks
from connector.settings import Settings


def test_sandbox_prints_exports_that_a_check_passes_with(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "connector", "sandbox", "--users", "20",
                             "--companies", "2"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        exports: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # the lines come at once, then the sandbox waits
            if not line or line.startswith("# Ctrl-C"):
                break
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = value
        assert set(exports) == {"MOESIF_API_URL", "MOESIF_MANAGEMENT_API_KEY", "SEGMENT_HOST",
                                "SEGMENT_WRITE_KEY", "MOESIF_COLLECTOR_URL",
                                "MOESIF_APPLICATION_ID"}
        settings = Settings(
            _env_file=None, connector_home=tmp_path / "home",
            moesif_api_url=exports["MOESIF_API_URL"], segment_host=exports["SEGMENT_HOST"],
            moesif_collector_url=exports["MOESIF_COLLECTOR_URL"],
            moesif_management_api_key=SecretStr(exports["MOESIF_MANAGEMENT_API_KEY"]),
            segment_write_key=SecretStr(exports["SEGMENT_WRITE_KEY"]),
            moesif_application_id=SecretStr(exports["MOESIF_APPLICATION_ID"]))
        results = scoped_checks(settings, Scope.ALL)
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        assert any("Collector" in r.name for r in results)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0  # a routine stop

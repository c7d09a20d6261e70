"""deploy/ serves metrics on the ports the README documents (9100 is node_exporter's
well-known port: a scheduler on a host that runs it would not start), the Dockerfile
exposes them, and Kubernetes scrapes the port the container listens on."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _documented_ports() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    schedule = re.search(r"moesif-segment schedule --metrics-port (\d+)", readme).group(1)
    forward = re.search(r"moesif-segment forward [^|`]*--metrics-port (\d+)", readme).group(1)
    return {"schedule": schedule, "forward": forward}


def _metrics_port(argv: list[str]) -> str | None:
    return argv[argv.index("--metrics-port") + 1] if "--metrics-port" in argv else None


def _commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if "command" in service and str(service.get("image", "")).startswith("moesif"):
            found.append((f"compose/{name}", service["command"]))
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc.get("spec", {})
            pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
            for container in pod.get("spec", {}).get("containers", []):
                found.append((f"{path.name}/{container['name']}", container["args"]))
    for unit in (DEPLOY / "systemd").glob("*.service"):
        line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
        found.append((unit.name, shlex.split(line.removeprefix("ExecStart="))[1:]))
    cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    found.append(("Dockerfile CMD", yaml.safe_load(cmd.group(1))))
    return found


def test_metrics_ports_are_the_documented_ones_and_exposed():
    documented = _documented_ports()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE).group(1).split())
    for where, argv in _commands():
        port = _metrics_port(argv)
        if port is None:
            continue
        assert port == documented[argv[0]], f"{where}: --metrics-port {port}"
        assert port in exposed, f"{where}: port {port} is not in the Dockerfile's EXPOSE"


def test_kubernetes_scrapes_and_probes_the_port_the_container_serves():
    doc = next(d for d in yaml.safe_load_all((DEPLOY / "kubernetes" /
                                              "deployment.yaml").read_text())
               if d["kind"] == "Deployment")
    pod = doc["spec"]["template"]
    container = pod["spec"]["containers"][0]
    port = int(_metrics_port(container["args"]))
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert {p["containerPort"] for p in container["ports"]} == {port}


def test_the_metrics_service_stays_reachable_while_healthz_fails():
    """The readiness probe is /healthz, which turns 503 when runs fail or go stale; the
    Service Prometheus scrapes must still route to the pod then."""
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "deployment.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"].get("publishNotReadyAddresses") is True


def test_compose_has_no_fixed_database_password():
    """A password in the file is a password in every copy of it; and a secret is scrubbed
    from output as a substring, so the old 'moesif' turned 'moesif-segment' into
    '***-segment' in every log line."""
    from urllib.parse import urlsplit

    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD")
    for name, service in services.items():
        url = (service.get("environment") or {}).get("STATE_URL")
        if url:
            assert urlsplit(url).password.startswith("${POSTGRES_PASSWORD"), name

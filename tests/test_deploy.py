"""deploy/: the Kubernetes, compose, systemd and Docker files use commands, options and
settings that exist (parsed here; nothing is deployed)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import typer
import yaml

from connector.cli import app
from connector.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# Added in parallel by the scale-out work (issue 11: PostgreSQL state, NATS forwarding).
# Once that is merged they are real and this set can be emptied; until then they are the
# only names allowed to be unknown here.
SETTINGS = {name.upper() for name in Settings.model_fields}


def _resolve(argv: list[str]) -> tuple[list[Any], list[str]]:
    """The chain of (click) commands argv walks down, and the rest of argv."""
    command = typer.main.get_command(app)
    chain = [command]
    rest = list(argv)
    # Duck-typed: typer may carry its own copy of click, so no isinstance(click.Group).
    while rest and rest[0] in getattr(command, "commands", {}):
        command = command.commands[rest.pop(0)]
        chain.append(command)
    return chain, rest


def _options(chain: list[Any]) -> set[str]:
    names: set[str] = set()
    for command in chain:
        for param in command.params:
            names.update(getattr(param, "opts", []))
            names.update(getattr(param, "secondary_opts", []))
    return names


def assert_command_exists(argv: list[str], where: str) -> None:
    chain, rest = _resolve(argv)
    assert len(chain) > 1, f"{where}: {argv[0]!r} is not a moesif-segment command"
    used = {arg.split("=", 1)[0] for arg in rest if arg.startswith("--")}
    unknown = used - _options(chain)
    assert not unknown, f"{where}: unknown options {sorted(unknown)} in {argv}"


def assert_settings_exist(names: set[str], where: str) -> None:
    unknown = names - SETTINGS
    assert not unknown, f"{where}: unknown settings {sorted(unknown)}"


def _connector_containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    template = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
    return template.get("spec", {}).get("containers", [])


def test_kubernetes_manifests_use_real_commands_and_settings():
    seen = 0
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for container in _connector_containers(doc):
                seen += 1
                assert container["image"].startswith("moesif-segment")
                assert_command_exists(container["args"], f"{path.name}/{container['name']}")
                assert_settings_exist({e["name"] for e in container.get("env", [])},
                                      f"{path.name}/{container['name']}")
                for probe in ("readinessProbe", "livenessProbe"):
                    port = container.get(probe, {}).get("httpGet", {}).get("port")
                    if port is not None:
                        names = {p.get("name") for p in container["ports"]}
                        assert port in names
    assert seen >= 2  # the CronJob and the Deployment
    kinds = [d["kind"] for p in (DEPLOY / "kubernetes").glob("*.yaml")
             for d in yaml.safe_load_all(p.read_text())]
    assert {"CronJob", "Deployment"} <= set(kinds)


def test_compose_file_runs_the_scaled_set_up_with_real_commands():
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "nats"} <= set(services)
    ours = {name: s for name, s in services.items()
            if str(s.get("image", "")).startswith("moesif-segment")}
    commands = {name: s["command"] for name, s in ours.items()}
    assert sum(c[0] == "schedule" for c in commands.values()) == 2
    assert sum(c[0] == "forward" and "--from-nats" in c for c in commands.values()) == 2
    for name, service in ours.items():
        assert_command_exists(service["command"], f"compose/{name}")
        assert_settings_exist(set(service.get("environment", {})), f"compose/{name}")


def _exec_start(unit: str) -> list[str]:
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_units_start_real_commands():
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} >= {"moesif-segment-schedule.service",
                                       "moesif-segment-forward.service"}
    for unit in units:
        text = unit.read_text()
        argv = _exec_start(text)
        assert Path(argv[0]).name == "moesif-segment"
        assert_command_exists(argv[1:], unit.name)
        env = set(re.findall(r"^Environment=([A-Z_]+)=", text, re.MULTILINE))
        assert_settings_exist(env, unit.name)
        assert "RestartPreventExitStatus=2" in text  # a configuration mistake: no loop
    analyze = shutil.which("systemd-analyze")
    if analyze:  # where available, systemd's own checks; the binary is not installed here
        done = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True,
                              text=True, timeout=60)
        problems = [ln for ln in done.stderr.splitlines()
                    if ln.strip() and "is not executable" not in ln]
        assert not problems, problems


def test_dockerfile_is_non_root_with_the_state_on_a_volume():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    home = re.search(r"CONNECTOR_HOME=(\S+)", text).group(1)
    assert f'VOLUME ["{home}"]' in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1)
    assert_command_exists(yaml.safe_load(cmd), "Dockerfile CMD")


def test_env_example_and_readme_name_every_setting():
    """`.env.example` and the README both claim to list every setting: a setting added
    without them fails here."""
    env_example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    missing = {name for name in SETTINGS
               if f"{name}=" not in env_example or f"`{name}`" not in readme}
    assert not missing, f"settings missing from .env.example or README: {sorted(missing)}"

"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Compose cannot run on every machine the kit is developed on, so the file is checked for what breaks it in
a learner's hands: a service missing, an unpinned image, a port open beyond loopback, a path or command
that does not exist, a worker spec the kit's runtime cannot load. ``docker compose config`` runs too
when a Docker CLI with the compose plugin is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from celerylab.paths import kit_root

ROOT = kit_root()
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KIT_MOUNT = "/kit"  # where the kit image mounts this checkout
BROKERS = {"redis", "rabbitmq"}
PROFILED = {"worker": "worker", "grade": "grade", "flower": "monitor", "jupyter": "notebooks"}
BIN = Path(sys.executable).parent  # the kit image installs the same requirements.txt as this venv


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable syntax with an empty environment: ``${X:-default}`` -> default, ``$$`` -> ``$``."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group("name") or m.group("bare"), m.group("op"), m.group("default") or ""
        if op in (":?", "?"):
            raise AssertionError(f"${{{name}{op}...}} makes compose fail when {name} is unset")
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    pattern = r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:-|-|:\?|\?)(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
    return re.sub(pattern, sub, value)


def resolve(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [resolve(v) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v) for k, v in node.items()}
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE.exists(), "docker-compose.yml is missing at the kit's root"
    return resolve(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def kit_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if "build" in svc}


def command_of(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def host_path(container_path: str) -> Path:
    """A path inside the kit image, as a path in this checkout (the image mounts it at /kit)."""
    assert container_path.startswith(KIT_MOUNT), container_path
    return ROOT / container_path[len(KIT_MOUNT) :].lstrip("/")


def test_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    """`docker compose up -d` (or `up -d redis rabbitmq`) gives the brokers and nothing else."""
    assert set(services) == BROKERS | set(PROFILED)
    for name in BROKERS:
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    for name, profile in PROFILED.items():
        assert services[name].get("profiles") == [profile], (
            f"{name} should only start with --profile {profile}"
        )


def test_images_pinned_and_builds_exist(services: dict[str, dict[str, Any]]) -> None:
    """Every image has an explicit version tag; every build context and Dockerfile exists."""
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image (a built service should still name its tag)"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag != "latest" and re.search(r"\d", tag), (
            f"{name}: image {image!r} is not pinned to a version tag"
        )
        if "build" in svc:
            build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
            context = (ROOT / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert base and re.search(r":\S*\d", base.group(1)) and not base.group(1).endswith(":latest"), (
        f"the Dockerfile's base image {base and base.group(1)!r} is not pinned"
    )


def test_ports_bound_to_loopback(services: dict[str, dict[str, Any]]) -> None:
    """A learner's laptop on café Wi-Fi must not serve Redis, RabbitMQ or Jupyter to the room."""
    seen = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} is not bound to 127.0.0.1"
            seen += 1
    assert seen >= 5  # redis, amqp, management UI, flower, jupyter


def test_broker_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    """The brokers report healthy, and everything that needs them waits for that."""
    for name in BROKERS:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: no usable healthcheck"
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert services["rabbitmq"]["healthcheck"]["test"][1] == "rabbitmq-diagnostics"
    for name, svc in kit_services(services).items():
        for broker in BROKERS:
            assert svc["depends_on"][broker]["condition"] == "service_healthy", (
                f"{name} must wait for {broker}"
            )


def test_referenced_paths_exist(services: dict[str, dict[str, Any]]) -> None:
    """Bind mounts, working dirs and every /kit/... path in commands and environment exist in the checkout."""
    strings: list[tuple[str, str]] = []
    for name, svc in kit_services(services).items():
        for volume in svc.get("volumes", []):
            source, _, target = volume.partition(":")
            assert (ROOT / source).exists(), f"{name}: mount source {source} does not exist"
            assert target.split(":")[0] == KIT_MOUNT, f"{name}: the checkout must be mounted at {KIT_MOUNT}"
        strings.append((name, svc.get("working_dir", KIT_MOUNT)))
        strings += [(name, arg) for arg in command_of(svc)]
        strings += [(name, str(v)) for v in (svc.get("environment") or {}).values()]
    found = 0
    for name, text in strings:
        for path in re.findall(rf"{KIT_MOUNT}(?:/[\w.\-]+)*", text):
            assert host_path(path).exists(), f"{name}: {path} (here {host_path(path)}) does not exist"
            found += 1
    assert found >= 3
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\S+\s*$", DOCKERFILE.read_text(), re.M):
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_editable_install_inputs_exist() -> None:
    """`pip install -e /kit` in the Dockerfile needs every file pyproject.toml names."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    readme = project.get("readme")
    files = [readme] if isinstance(readme, str) else [readme.get("file")] if isinstance(readme, dict) else []
    for name in filter(None, files):
        assert (ROOT / name).is_file(), f"pyproject.toml names {name}: without it the kit image cannot build"


def _check_celery(name: str, argv: list[str]) -> None:
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery

    commands = celery.list_commands(click.Context(celery))
    at = next(
        (
            i
            for i, a in enumerate(argv)
            if a in commands
            and argv[i - 1]
            not in ("-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir")
        ),
        None,
    )
    assert at is not None, f"{name}: `{shlex.join(argv)}` names no celery sub-command ({', '.join(commands)})"
    ctx = celery.make_context("celery", argv[1 : at + 1])  # the global options (-A, --broker) parse
    sub, rest = celery.get_command(ctx, argv[at]), argv[at + 1 :]
    if argv[at] == "flower":  # flower passes its options on to tornado
        from flower.options import options

        for arg in rest:
            option = arg.lstrip("-").split("=")[0].replace("-", "_")
            assert arg.startswith("--") and option in options._options, f"{name}: flower has no option {arg}"
        return
    obj = CLIContext(app=Celery(set_as_current=False), no_color=True, workdir=None, quiet=True)
    with click.Context(sub, parent=ctx, info_name=argv[at], obj=obj) as sub_ctx:
        sub.parse_args(sub_ctx, list(rest))  # unknown options and bad values raise here


def _check_celerylab(name: str, argv: list[str]) -> None:
    from celerylab.cli import build_parser

    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        raise AssertionError(f"{name}: `{shlex.join(argv)}` is not a valid celerylab command line") from exc
    if getattr(args, "lab", None):
        assert (ROOT / "labs" / args.lab).is_dir(), f"{name}: no lab labs/{args.lab}"


def test_commands_exist(services: dict[str, dict[str, Any]]) -> None:
    """Each command is an installed console script and its sub-command and options parse."""
    for name, svc in kit_services(services).items():
        argv = command_of(svc)
        assert argv, f"{name}: no command"
        assert (BIN / argv[0]).exists() or shutil.which(argv[0]), f"{name}: {argv[0]} is not installed"
        if argv[0] == "celery":
            _check_celery(name, argv)
        elif argv[0] == "celerylab":
            _check_celerylab(name, argv)
        elif argv[0] == "jupyter":
            assert (BIN / f"jupyter-{argv[1]}").exists(), f"{name}: `jupyter {argv[1]}` is not installed"
            assert not any(re.search(r"token=(''|\"\"|)$", a) for a in argv), (
                f"{name}: Jupyter without a token"
            )
        else:
            raise AssertionError(f"{name}: unexpected command {argv[0]}; teach this test about it")


def test_worker_spec_loads_the_lab(services: dict[str, dict[str, Any]]) -> None:
    """$CELERYLAB_TASKS of the worker service is what celerylab.engine.runtime reads, and it loads the lab."""
    from celery.app.defaults import DEFAULTS, flatten

    svc = services["worker"]
    spec = json.loads(svc["environment"]["CELERYLAB_TASKS"])
    folder = host_path(spec["folder"])
    assert (folder / f"{spec.get('module', 'tasks')}.py").is_file(), f"no tasks.py in {folder}"
    known = {name for name, _ in flatten(DEFAULTS)}
    assert set(spec["config"]) <= known, f"not Celery settings: {set(spec['config']) - known}"
    assert command_of(svc)[:3] == ["celery", "-A", "celerylab.engine.runtime"]

    here = {**spec, "folder": str(folder)}  # the same spec, as a worker on this machine would get it
    env = {**os.environ, "CELERYLAB_TASKS": json.dumps(here)}
    code = "from celerylab.engine.runtime import app; print(app.conf.broker_url); print(sorted(app.tasks))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=folder, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    broker, tasks = out.stdout.splitlines()[-2:]
    assert broker == spec["config"]["broker_url"]
    assert "tasks." in tasks, f"the runtime loaded no task from {folder}: {tasks}"


def test_docker_compose_config() -> None:
    """`docker compose config -q` accepts the file (only where a Docker CLI with compose is installed)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine: compose validated structurally only")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        why = ((version.stderr or version.stdout).strip().splitlines() or ["no output"])[0]
        pytest.skip(f"`docker compose` is not available here ({why}): compose validated structurally only")
    for profile in (
        [],
        ["--profile", "worker", "--profile", "grade", "--profile", "monitor", "--profile", "notebooks"],
    ):
        out = subprocess.run(
            [docker, "compose", "-f", str(COMPOSE), *profile, "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr


def test_docker_compose_v1_config() -> None:
    """Debian's `docker-compose` 1.29 (`apt-get install docker-compose`) validates the file, every profile
    too, without a Docker engine: a real Compose parser where the `docker compose` plugin is missing."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("no docker-compose here (apt-get install docker-compose): compose validated structurally")
    for profile in (
        [],
        ["--profile", "worker", "--profile", "grade", "--profile", "monitor", "--profile", "notebooks"],
    ):
        out = subprocess.run(
            [tool, "-f", str(COMPOSE), *profile, "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr

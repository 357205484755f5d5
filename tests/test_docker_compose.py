"""docker-compose.yml without a Docker engine: its structure, and its commands run for real.

The file must describe Redis with AOF, gunicorn, one worker per GPU that
reserves and sees only its GPU, and Flower; the docs must show the same
commands; and each command, started here on loopback as compose would start
it (addresses aside, the CPU instead of a GPU), must serve.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis
import yaml

from tests.servers import ROOT, free_port, stop_process, wait_until

COMPOSE = ROOT / "docker-compose.yml"
APP_SERVICES = ("web", "worker-gpu0", "worker-gpu1", "flower")
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str], required_as_reference: bool = False) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` against ``env``."""

    def replace(match: re.Match[str]) -> str:
        name, kind, argument = match.groups()
        if env.get(name):
            return env[name]
        if kind == "-":
            return argument
        if kind == "?" and required_as_reference:
            return f"${name}"
        if kind == "?":
            raise KeyError(f"{name} is required: {argument}")
        return ""

    return _VARIABLE.sub(replace, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def command(compose: dict, service: str, env: Mapping[str, str] = {}, references: bool = False) -> list[str]:
    return shlex.split(interpolate(compose["services"][service]["command"], env, references))


def test_services_and_redis_persistence(compose):
    services = compose["services"]
    assert set(services) == {"redis", *APP_SERVICES}
    redis_command = command(compose, "redis")
    assert redis_command[:3] == ["redis-server", "--appendonly", "yes"]
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])
    assert "redis-data" in compose["volumes"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "DJANGO_SECRET_KEY" in service["environment"]


def test_one_worker_per_gpu_each_pinned_to_its_own(compose):
    names, gpus, host_ports = [], [], []
    for service_name in ("worker-gpu0", "worker-gpu1"):
        service = compose["services"][service_name]
        argv = command(compose, service_name)
        assert argv[:4] == ["celery", "-A", "django_demo", "worker"]
        assert "-E" in argv and argv[argv.index("--pool") + 1] == "solo"
        names.append(argv[argv.index("-n") + 1])
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus.append(device["device_ids"])
        assert service["environment"]["CELERY_BATCHING_DEVICE"] == "cuda:0"  # the one GPU it sees
        assert service["environment"]["CELERY_BATCHING_METRICS_PORT"] == "9100"
        host_ports.append(service["ports"][0].split(":")[0])
    assert names == ["gpu0@%h", "gpu1@%h"]
    assert gpus == [["0"], ["1"]]
    assert len(set(host_ports)) == 2


def test_workers_are_healthy_only_when_ready(compose):
    for name in ("worker-gpu0", "worker-gpu1"):
        service = compose["services"][name]
        check = " ".join(service["healthcheck"]["test"])
        port = service["environment"]["CELERY_BATCHING_METRICS_PORT"]
        assert f"http://127.0.0.1:{port}/ready" in check, check
        assert int(service["healthcheck"]["start_period"].rstrip("s")) >= 300  # a model's load time


def healthcheck(compose: dict, service: str, port: int) -> subprocess.CompletedProcess[str]:
    """A service's healthcheck command, run here, aimed at ``port``."""
    program, *args = compose["services"][service]["healthcheck"]["test"][1:]
    assert program == "python"
    code = args[-1]
    for default in (":9100/", ":8000/"):
        code = code.replace(default, f":{port}/")
    return subprocess.run([sys.executable, *args[:-1], code], capture_output=True, text=True, check=False)


def test_web_and_flower_commands(compose):
    assert command(compose, "web")[:2] == ["gunicorn", "django_demo.wsgi"]
    flower = command(compose, "flower", references=True)
    assert flower[:4] == ["celery", "-A", "django_demo", "flower"]
    assert "--basic-auth=$FLOWER_BASIC_AUTH" in flower  # Flower's API refuses to run open


def test_missing_secrets_stop_compose():
    with pytest.raises(KeyError, match="DJANGO_SECRET_KEY is required"):
        interpolate(COMPOSE.read_text(), {"FLOWER_BASIC_AUTH": "a:b"})
    with pytest.raises(KeyError, match="FLOWER_BASIC_AUTH is required"):
        interpolate(COMPOSE.read_text(), {"DJANGO_SECRET_KEY": "k"})


def test_an_empty_flower_basic_auth_stops_compose():
    # Flower given --basic-auth= (empty) runs with no authentication at all; compose's ${VAR:?} refuses it
    with pytest.raises(KeyError, match="FLOWER_BASIC_AUTH is required"):
        interpolate(COMPOSE.read_text(), {"DJANGO_SECRET_KEY": "k", "FLOWER_BASIC_AUTH": ""})


def documented_text() -> str:
    """README.md and docs/, with ``${VAR:?...}`` read as ``$VAR``, whitespace collapsed."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    return " ".join(interpolate(text, {}, required_as_reference=True).split())


def test_the_docs_show_the_same_commands(compose):
    documented = documented_text()
    for service in APP_SERVICES:
        text = " ".join(command(compose, service, references=True))
        assert text in documented, f"README.md and docs/ do not show the {service} command: {text}"


def test_every_documented_flower_command_refuses_an_empty_basic_auth():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), COMPOSE]
    uses = [
        (page.name, line.strip())
        for page in pages
        for line in page.read_text().splitlines()
        if " flower " in f" {line} " and "--basic-auth" in line
    ]
    assert uses, "no Flower command with --basic-auth found in the docs"
    for page, line in uses:
        assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in line, f"{page}: {line}"


def test_the_shell_refuses_the_documented_flower_command_with_an_empty_basic_auth():
    # Given the documented command, with Flower itself replaced by echo
    (line,) = {
        line.strip()
        for line in (ROOT / "docs" / "deployment.md").read_text().splitlines()
        if line.startswith("celery -A django_demo flower")
    }
    # When bash expands it with FLOWER_BASIC_AUTH empty, Then it stops before running anything
    run = subprocess.run(
        ["bash", "-c", "echo " + line], env={"FLOWER_BASIC_AUTH": ""}, capture_output=True, text=True, check=False
    )
    assert run.returncode != 0 and "set FLOWER_BASIC_AUTH to user:password" in run.stderr
    run = subprocess.run(
        ["bash", "-c", "echo " + line], env={"FLOWER_BASIC_AUTH": "a:b"}, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and "--basic-auth=a:b" in run.stdout


# -- the commands, run here as compose would run them --------------------------------


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option`` (``--opt=x`` or ``--opt x``) set to ``value``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return [*out, f"{option}={value}"]


class Service:
    """One compose command as a subprocess, its program run by this Python."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**env, "PYTHONPATH": str(ROOT)},
            )

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.process.args} exited: {self.log.read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        stop_process(self.process, 30)


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


@pytest.fixture
def stack(compose, tmp_path) -> Iterator[dict]:
    """Redis, a worker, gunicorn and Flower from their compose commands, on loopback ports."""
    started: list = []
    ports = {name: free_port() for name in ("redis", "web", "flower", "metrics")}
    redis_argv = [
        *command(compose, "redis"),
        "--port",
        str(ports["redis"]),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(tmp_path),
        "--save",
        "",
    ]
    redis_process = subprocess.Popen(redis_argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    started.append(redis_process)
    here = {"DJANGO_SECRET_KEY": "compose-test-key", "FLOWER_BASIC_AUTH": "admin:compose-test"}
    base = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    }

    def env_of(service: str, **overrides: str) -> dict[str, str]:
        declared = {k: interpolate(str(v), here) for k, v in compose["services"][service]["environment"].items()}
        return {**base, **declared, "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0", **overrides}

    try:
        client = redis.Redis(port=ports["redis"])
        wait_until(lambda: _pings(client), 10, "redis-server from the compose command")
        worker = Service(
            command(compose, "worker-gpu0", here),
            env_of("worker-gpu0", CELERY_BATCHING_DEVICE="cpu", CELERY_BATCHING_METRICS_PORT=str(ports["metrics"])),
            tmp_path / "worker.log",
        )
        started.append(worker)
        web = Service(
            with_option(command(compose, "web", here), "--bind", f"127.0.0.1:{ports['web']}"),
            env_of("web"),
            tmp_path / "web.log",
        )
        started.append(web)
        flower_argv = with_option(command(compose, "flower", here), "--address", "127.0.0.1")
        flower = Service(
            with_option(flower_argv, "--port", str(ports["flower"])), env_of("flower"), tmp_path / "flower.log"
        )
        started.append(flower)
        yield {"compose": compose, "redis": client, "ports": ports, "worker": worker, "web": web, "flower": flower}
    finally:
        for process in reversed(started):
            if isinstance(process, Service):
                process.stop()
            else:
                process.terminate()
                process.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_compose_commands_serve(stack):
    ports = stack["ports"]

    # Redis persists with AOF
    assert stack["redis"].config_get("appendonly") == {"appendonly": "yes"}

    # The site sees the gpu0 worker on the embed queue, and embeds through it
    def worker_listed():
        stack["worker"].alive(), stack["web"].alive()
        body = get(f"http://127.0.0.1:{ports['web']}/healthz")
        return body if body and '"embed": ["gpu0@' in body else None

    wait_until(worker_listed, 120, "the site to list the gpu0 worker", interval=0.5)

    # (each gunicorn process polls the workers on its own, so one may see the worker a poll later)
    def embedded():
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['web']}/api/embed",
            data=b'{"text": "hello"}',
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status == 200
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            return False

    wait_until(embedded, 30, "an embedding from the site", interval=0.5)

    # The compose healthchecks pass: the worker is ready (model loaded, claiming), the site answers
    assert healthcheck(stack["compose"], "worker-gpu0", ports["metrics"]).returncode == 0
    assert healthcheck(stack["compose"], "web", ports["web"]).returncode == 0

    # The worker exports its metrics, and Flower answers
    wait_until(
        lambda: "celery_batching_batch_size" in (get(f"http://127.0.0.1:{ports['metrics']}/metrics") or ""),
        30,
        "the worker's metrics endpoint",
    )
    wait_until(
        lambda: stack["flower"].alive() and get(f"http://127.0.0.1:{ports['flower']}/healthcheck") == "OK",
        60,
        "flower's health check",
    )

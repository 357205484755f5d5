"""Every Celery minor version the package declares, on the client and on the worker, and mixed pairs.

One venv per version under ``.venv-celery/<version>``: ``celery[redis]`` and
``kombu`` of that minor version (they are released together) and the
project's other runtime dependencies, no torch. A stamp names what was
installed, so a venv is built once and a second run starts at once. The
project itself is not installed there: ``PYTHONPATH`` points at this checkout.

Each pair runs a real worker from one venv and clients from another
(tests/version_client.py): every client path once, then 64 calls in flight
(4 processes x 16 threads of ``.delay(x).get()``) losing no reply.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT, Worker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli before Python 3.11
    import tomli as tomllib

pytestmark = pytest.mark.slow

VERSIONS = ("5.4", "5.5", "5.6", "5.7")
#: (client, worker): each version alone, each end of the range against the other, and issue 12's pair.
PAIRS = [(v, v) for v in VERSIONS] + [("5.4", "5.7"), ("5.7", "5.4"), ("5.6", "5.7")]
VENVS = ROOT / ".venv-celery"
PROCESSES, THREADS = 4, 16
#: Calls per thread: 1,024 in all per pair; 6,400 for issue 12's pair, as in the issue.
CALLS = {("5.6", "5.7"): 100}
DEFAULT_CALLS = 16
PIP_TIMEOUT_SECONDS = 600
CLIENT_TIMEOUT_SECONDS = 240


def requirements(version: str) -> list[str]:
    """The declared runtime dependencies, with Celery and kombu held to ``version``.

    The declared ranges stay in: a version they exclude fails to resolve, naming the conflict.
    """
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [*declared, f"celery[redis]=={version}.*", f"kombu=={version}.*"]


def _stamp(version: str) -> Path:
    wanted = json.dumps([sys.version, requirements(version)]).encode()
    return VENVS / version / f".installed-{hashlib.sha1(wanted).hexdigest()[:12]}"


def build_venv(version: str) -> tuple[Path, float]:
    """The venv's Python, and the seconds it took to build (0 when the stamp says it is there)."""
    venv, stamp = VENVS / version, _stamp(version)
    python = venv / "bin" / "python"
    if stamp.exists():
        return python, 0.0
    started = time.monotonic()
    for old in venv.glob(".installed-*"):
        old.unlink()
    # This Python's pip installs into the venv (pip --python): no pip of its own to set up, no bytecode compiled ahead.
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True, timeout=60)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile"]
    pip += ["--disable-pip-version-check", *requirements(version)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"cannot build the Celery {version} venv (pip needs PyPI):\n{done.stdout}{done.stderr}")
    stamp.touch()
    return python, time.monotonic() - started


@pytest.fixture(scope="module")
def pythons() -> dict[str, Path]:
    """Each version's Python; venvs not built yet are built two at a time (pip waits on the network, then unzips)."""
    with ThreadPoolExecutor(2) as pool:
        built = dict(zip(VERSIONS, pool.map(build_venv, VERSIONS)))
    for version, (_, seconds) in built.items():
        if seconds:
            print(f"built the Celery {version} venv in {seconds:.0f} s")
    return {version: python for version, (python, _) in built.items()}


def installed(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def run_client(python: Path, redis_url: str, *argv: str) -> dict[str, Any]:
    env = {**os.environ, "CB_TEST_BROKER": redis_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(python), "-m", "tests.version_client", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("version", VERSIONS)
def test_each_venv_holds_its_celery_and_kombu(pythons, version):
    for package in ("celery", "kombu"):
        assert re.match(rf"{re.escape(version)}\.\d+$", installed(pythons[version], package))


@pytest.mark.parametrize(("client", "worker"), PAIRS, ids=[f"client{c}-worker{w}" for c, w in PAIRS])
def test_client_and_worker_on_these_versions(pythons, redis_url, client, worker):
    # Given a worker running one Celery version
    served = Worker("tests.apps.versions", redis_url, python=str(pythons[worker]))
    try:
        served.start()
        assert f" v{installed(pythons[worker], 'celery')} " in served.log()
        # Then a client on another gets every path right: fast and Celery's, failures, batches
        paths = run_client(pythons[client], redis_url, "paths")
        assert paths["celery"] == installed(pythons[client], "celery")
        assert paths["problems"] == []
        # And with 64 calls in flight, every one gets its own value back
        calls = CALLS.get((client, worker), DEFAULT_CALLS)
        load = run_client(pythons[client], redis_url, "load", str(PROCESSES), str(THREADS), str(calls))
        assert load["calls"] == PROCESSES * THREADS * calls
        assert load["lost"] == []
    finally:
        served.stop()
    # And the worker logged no error but the failure the client asked for
    errors = [line for line in served.log().splitlines() if "ERROR/" in line and "versions.refuse" not in line]
    assert errors == []

"""The wheel, as a user gets it: built without warnings, installed alone, serving a batched task.

The wheel is built as pip builds a source release (an sdist, then a wheel from
it), from the files git knows (tracked or not ignored), so a file the build
needs but nobody added, or one the sdist leaves out, shows up here and not on
a user's machine. It is installed into a fresh virtual environment with its
dependencies from the package index, and everything after that runs from a
scratch directory with no path to this checkout: had the Lua scripts been left
out of the wheel, the worker below could not claim a single message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.servers import ROOT, stop_process, wait_until

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The app a user would write, run from the scratch directory by the installed package only.
APP = """
import os

from celery import Celery
from celery_batching import batched

app = Celery("proj", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])


@batched(app, max_batch_size=8)
def double(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]
"""

CLIENT = """
import celery_batching, proj

print(celery_batching.__file__)
print(sorted(r.get(timeout=30) for r in [proj.double.delay(x) for x in range(5)]))
"""


def source_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def copy_source(into: Path) -> Path:
    for name in source_files():
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    return into


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1", **extra}


def backend(hook: str, source: Path, out: Path) -> tuple[Path, str]:
    """Run one setuptools backend hook (``build_sdist``, ``build_wheel``) from this environment.

    Every Python warning is an error (``-W error``), and the printed output is
    returned for the caller to search, so a deprecation fails the test.
    """
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))",
            str(out),
        ],
        cwd=source,
        check=False,
        capture_output=True,
        text=True,
        # (with PYTHONDONTWRITEBYTECODE set, setuptools says it skips byte-compiling: not a project warning)
        env={k: v for k, v in clean_env().items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out / result.stdout.strip().splitlines()[-1], result.stdout + result.stderr


def build_wheel(source: Path, tmp_path: Path) -> tuple[Path, str]:
    """The way pip builds from a source release: an sdist first, then a wheel from the unpacked sdist."""
    sdist, sdist_output = backend("build_sdist", source, tmp_path / "sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel, wheel_output = backend("build_wheel", unpacked, tmp_path / "dist")
    return wheel, sdist_output + wheel_output


def test_the_dockerfile_names_only_extras_that_exist():
    # Given the extras the Dockerfile installs
    dockerfile = (ROOT / "Dockerfile").read_text()
    named = {extra for group in re.findall(r'pip install "\.\[([^]]+)\]"', dockerfile) for extra in group.split(",")}
    # Then each is declared, so pip installs what the image needs instead of warning and going on
    assert named, "the Dockerfile no longer installs the project with extras"
    assert named <= set(PYPROJECT["project"]["optional-dependencies"])


def test_the_setup_script_installs_the_declared_extras():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    (group,) = re.findall(r'-e "\.\[([^]]+)\]"', setup)
    assert set(group.split(",")) == {"models", "django", "dev", "docs"}


@pytest.mark.slow
def test_the_wheel_installs_alone_and_serves_a_batched_task(tmp_path, redis_url):
    # Given a wheel built from the project's files, without a warning
    wheel, build_output = build_wheel(copy_source(tmp_path / "src"), tmp_path)
    assert not re.search(r"warn|deprecat", build_output, re.IGNORECASE), build_output
    names = zipfile.ZipFile(wheel).namelist()
    for lua in ("claim.lua", "give_back.lua", "store_results.lua"):
        assert f"celery_batching/worker/lua/{lua}" in names
    assert "celery_batching/client/lua/push.lua" in names
    assert "celery_batching/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)

    # When it is installed into a fresh venv, dependencies from the package index
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, celery = env_dir / "bin" / "python", env_dir / "bin" / "celery"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=240,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    installed = subprocess.run(
        [
            python,
            "-c",
            (
                "from importlib import resources; import celery_batching.worker as w;"
                "print(sorted(p.name for p in resources.files(w).joinpath('lua').iterdir()))"
            ),
        ],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    shipped = sorted(path.name for path in (ROOT / "celery_batching" / "worker" / "lua").glob("*.lua"))
    assert installed.stdout.strip() == str(shipped), installed.stderr

    # And a real worker from that venv serves an app module in a scratch directory
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "proj.py").write_text(APP)
    (scratch / "client.py").write_text(CLIENT)
    env = clean_env(REDIS_URL=redis_url)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [
                celery,
                "-A",
                "proj",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
                "-n",
                "pkg@%h",
            ],
            cwd=scratch,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(f"the installed worker exited:\n{log_path.read_text()}")
            return " ready." in log_path.read_text()

        wait_until(ready, 60, "the installed worker to be ready")
        client = subprocess.run(
            [python, "client.py"], check=False, cwd=scratch, capture_output=True, text=True, env=env, timeout=60
        )

        # Then the results come back, computed by the installed package, not this checkout
        assert client.returncode == 0, client.stdout + client.stderr + log_path.read_text()
        location, results = client.stdout.strip().splitlines()
        assert Path(location).is_relative_to(env_dir) and not Path(location).is_relative_to(ROOT)
        assert results == "[0, 2, 4, 6, 8]"
    finally:
        stop_process(worker)

"""The HTTP workload: the Django demo under gunicorn, load from ``wrk``.

Every request POSTs one text and gets its all-MiniLM-L6-v2 embedding back,
from ``in_flight`` connections for ``http_seconds`` (``wrk -t2 --latency``):

* ``ours``: ``/api/embed``, the demo's own view; it sends one batched task to
  the demo's own MiniLM workers (``celery -A django_demo worker -Q embed``,
  as many as the case has) and waits for the result;
* ``naive``: ``/api/naive/embed`` with ``INFERENCE_NAIVE=1``; the web process
  runs the same MiniLM itself, ``predict([text])`` per request.

So only the minilm model applies. gunicorn runs one process with a thread
per connection, so no request waits for a thread. wrk is Debian's package
(``apt-get install -y wrk``); its script, ``wrk_post.lua``, ends with one JSON
line of figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .procs import Group, HarnessError, free_port
from .stats import Measurement
from .systems import CELERY_WORKER_OPTIONS, REPO

# System -> the endpoint it is measured on.
ENDPOINTS = {"ours": "/api/embed", "naive": "/api/naive/embed"}
# The demo's embed task serves this bench model's work (MiniLM on one text).
MODEL = "minilm"
# The demo's Redis db, apart from the bench apps' broker (0) and results (1).
DEMO_DB = 2
WRK_SCRIPT = REPO / "benchmarks" / "wrk_post.lua"
WRK_THREADS = 2


def applies(system: str, model: str) -> bool:
    return system in ENDPOINTS and model == MODEL


def node_names(workers: int) -> list[str]:
    return [f"demo{i}@bench" for i in range(workers)]


def worker_commands(workers: int) -> list[list[str]]:
    """The demo's batching workers, with the options every bench Celery worker gets."""
    return [
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "django_demo",
            "worker",
            "-Q",
            "embed",
            "-n",
            name,
            *CELERY_WORKER_OPTIONS,
        ]
        for name in node_names(workers)
    ]


def site_env(base: dict[str, str], redis_url: str | None) -> dict[str, str]:
    """The demo's settings: the case's Redis for the batched endpoint, else the naive one turned on."""
    env = {
        **base,
        "DJANGO_SECRET_KEY": "benchmark-only",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_LOG_LEVEL": "WARNING",
    }
    if redis_url is None:
        env["INFERENCE_NAIVE"] = "1"
    else:
        env["REDIS_URL"] = f"{redis_url}/{DEMO_DB}"
    return env


class DemoSite(Group):
    """``gunicorn django_demo.wsgi`` on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path, threads: int) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "django_demo.wsgi",
                "--bind",
                self.url[len("http://") :],
                "--workers",
                "1",
                "--threads",
                str(threads),
                "--timeout",
                "120",
            ],
            env=env,
            log=log,
            cwd=REPO,
        )

    def post(self, path: str, text: str) -> int:
        """The status of one POST; 0 when nothing answers yet."""
        request = urllib.request.Request(
            self.url + path, data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):
            return 0

    def warm_up(self, path: str, requests: int, deadline: float, check: Callable[[], None]) -> None:
        """Until ``path`` answers 200 (the site sees a worker, or loaded its model), then ``requests`` more."""
        while (status := self.post(path, "warm-up")) != 200:
            check()
            if not self.alive():
                raise HarnessError(f"gunicorn exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.url}{path} still answers {status or 'nothing'}:\n{self.tail()}")
            time.sleep(0.2)
        for i in range(requests):
            if (status := self.post(path, f"warm-up {i}")) != 200:
                raise HarnessError(f"warm-up request to {self.url}{path} answered {status}:\n{self.tail()}")


def wrk(url: str, connections: int, seconds: float, log: Path) -> Measurement:
    """``wrk`` against ``url``; requests/s and latency percentiles from its script's summary line."""
    binary = shutil.which("wrk")
    if binary is None:
        raise HarnessError("the http workload needs wrk: apt-get install -y wrk")
    argv = [
        binary,
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "60s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    log.write_text(done.stdout + done.stderr)
    summary = next((line for line in reversed(done.stdout.splitlines()) if line.startswith("{")), None)
    if done.returncode != 0 or summary is None:
        raise HarnessError(f"wrk failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    figures = json.loads(summary)
    return Measurement(
        requests=figures["requests"],
        failed=figures["failed"],
        throughput=figures["requests"] / (figures["duration_us"] / 1e6),
        p50=figures["p50_us"] / 1e6,
        p99=figures["p99_us"] / 1e6,
    )

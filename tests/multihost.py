"""Three hosts on one machine: a web host and two worker hosts, one Redis on this side.

Each host is a network namespace (:mod:`tests.netns`); Redis listens on this
side's end of every veth (and on loopback, for the test's own reads). The web
host runs gunicorn with :mod:`tests.apps.faulty_web`; each worker host runs a
``celery -A tests.apps.faulty worker``. Load enters through the web host's
veth, as it would from another machine. The workers' models record every
batch to files (:class:`~tests.fault_tools.Records`: the file system is
shared, the network is not), so what ran where is seen even while a host is
cut off; worker ``a`` waits at a gate the test controls, so a link can be cut
while ``a`` holds a batch in ``predict``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from tests.fault_tools import Gate, Records
from tests.netns import Hosts
from tests.servers import ROOT, RedisServer, Worker, stop_process, wait_until

APP = "tests.apps.faulty"
QUEUE = "faulty.work"
WEB_PORT = 8000
# Redis refuses clients that are not on loopback unless it has a password (protected mode).
REDIS_PASSWORD = "multihost-test-only"
# The worker host whose link the runs cut, and the one that takes over its claims.
CUT, SURVIVOR = "a", "b"


class MultiHost:
    """Starts the hosts, their servers and processes; :meth:`stop` removes everything, in any state."""

    def __init__(self, workdir: Path, visibility_timeout: float = 5.0, batch_seconds: float = 0.05) -> None:
        self.workdir = workdir
        self.visibility_timeout = visibility_timeout
        self.batch_seconds = batch_seconds
        self.hosts = Hosts(["web", CUT, SURVIVOR])
        self.records = Records(workdir / "records")
        self.gate = Gate(workdir / "gate")
        self.redis: RedisServer | None = None
        self.workers: dict[str, Worker] = {}
        self.web: subprocess.Popen[bytes] | None = None
        self._clients: dict[int, redis.Redis] = {}

    def start(self) -> MultiHost:
        try:
            self.hosts.create()
            self.redis = RedisServer(password=REDIS_PASSWORD, also_bind=self.hosts.server_addresses()).start()
            self.gate.open()
            self.workers = {name: self._worker(name) for name in (CUT, SURVIVOR)}
            with ThreadPoolExecutor(len(self.workers)) as pool:
                list(pool.map(lambda worker: worker.start(120), self.workers.values()))
            self._start_web()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        for worker in self.workers.values():
            worker.stop()
        stop_process(self.web, 15)
        if self.redis is not None:
            self.redis.cleanup()
        self.hosts.delete()

    def _broker_url(self, host: str) -> str:
        assert self.redis is not None
        return self.redis.url(0, self.hosts[host].server_address)

    def _worker(self, name: str) -> Worker:
        env = {
            "CB_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "CB_BATCH_SECONDS": str(self.batch_seconds),
            "CB_RECORD_DIR": str(self.records.path.parent),
        }
        if name == CUT:
            env["CB_GATE_DIR"] = str(self.gate.directory)
        prefix = self.hosts[name].exec_prefix()
        return Worker(APP, self._broker_url(name), "-Q", QUEUE, name=f"{name}@multihost", env=env, prefix=prefix)

    def _start_web(self) -> None:
        web = self.hosts["web"]
        argv = [
            *web.exec_prefix(),
            sys.executable,
            "-m",
            "gunicorn",
            "tests.apps.faulty_web:application",
            "--bind",
            f"{web.address}:{WEB_PORT}",
            "--worker-class",
            "gthread",
            "--threads",
            "16",
            "--timeout",
            "300",
        ]
        env = {**os.environ, "CB_TEST_BROKER": self._broker_url("web"), "PYTHONPATH": str(ROOT)}
        log = self.workdir / "web.log"
        with log.open("wb") as handle:
            self.web = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        wait_until(self._web_answers, 60, f"gunicorn on the web host; log: {log}", interval=0.2)

    def _web_answers(self) -> bool:
        assert self.web is not None
        if self.web.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.web.returncode}: {(self.workdir / 'web.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{self.web_url}/healthz", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    # -- what the runs use -------------------------------------------------

    @property
    def web_url(self) -> str:
        return f"http://{self.hosts['web'].address}:{WEB_PORT}"

    def post(self, samples: list[int], timeout: float = 180) -> dict[str, Any]:
        """``POST /work`` from this side, through the web host's veth."""
        request = urllib.request.Request(
            f"{self.web_url}/work",
            data=json.dumps({"samples": samples}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def results_db(self) -> redis.Redis:
        """A client of the results database, kept for the run (a dropped client closes its pub/sub too)."""
        return self._client(1)

    def broker_db(self) -> redis.Redis:
        return self._client(0)

    def _client(self, db: int) -> redis.Redis:
        assert self.redis is not None
        if db not in self._clients:
            self._clients[db] = self.redis.client(db)
        return self._clients[db]

    def host_of(self) -> dict[int, str]:
        """Worker process id -> host name (``ip netns exec`` execs the worker in place)."""
        return {worker.process.pid: name for name, worker in self.workers.items() if worker.process is not None}

    def runs_by_host(self, samples: set[int] | None = None) -> dict[str, Counter[int]]:
        """Per host, how many predict calls each sample took part in (optionally only ``samples``)."""
        hosts = self.host_of()
        runs: dict[str, Counter[int]] = {name: Counter() for name in self.workers}
        for call in self.records.calls("work"):
            runs[hosts[call["pid"]]].update(s for s in call["batch"] if samples is None or s in samples)
        return runs


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cb-multihost-"))

"""Real servers for tests: a private redis-server and ``celery worker`` subprocesses.

Everything started here runs on loopback, on a free port, and is stopped by
the PID we started; nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll ``condition`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen | None, grace: float = 30) -> None:
    """SIGTERM a process we started, SIGKILL it if it outlives ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class RedisServer:
    """A private redis-server on a free loopback port (and on ``also_bind`` addresses, ours too)."""

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = False,
        also_bind: list[str] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup.sh (apt-get install redis-server)")
        self.port = port or free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="cb-redis-")
        self.args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            *(also_bind or []),
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--loglevel",
            "warning",
        ]
        if password:
            self.args += ["--requirepass", password]
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, address: str = "127.0.0.1") -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{address}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(self._pings, 10, f"redis-server on port {self.port}")
        return self

    def _pings(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.process.stderr.read().decode()}")
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Worker:
    """A real ``celery -A module worker`` subprocess.

    Run by ``python`` (another venv's, for another Celery) under ``prefix`` (``ip netns exec ns``).
    """

    def __init__(
        self,
        app_module: str,
        broker_url: str,
        *args: str,
        name: str | None = None,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.name = name or f"w{free_port()}@localhost"
        self.log_path = Path(tempfile.mkstemp(prefix="cb-worker-", suffix=".log")[1])
        self.env = {
            **os.environ,
            "CB_TEST_BROKER": broker_url,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.argv = [
            *(prefix or []),
            python,
            "-m",
            "celery",
            "-A",
            app_module,
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "-n",
            self.name,
            "--without-mingle",
            "--without-gossip",
            *args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Worker:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        wait_until(self._ready, timeout, f"worker {self.name} to be ready; log:\n{self.log_path}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}:\n{self.log()}")
        return " ready." in self.log()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        stop_process(self.process)

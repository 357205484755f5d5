"""Processes the harness starts and stops: a private redis-server, workers, clients.

Every process is started in its own session, so stopping it stops its
children too (service-streamer's spawned workers), by its own process group
id and nothing else. CPU time is read per process, children included, from
/proc through psutil.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

# The redis-server the harness runs: Debian's package, as in scripts/setup.sh, unless
# $BENCH_REDIS_SERVER names another (a machine without the package, such as a lent GPU box).
REDIS_SERVER = os.environ.get("BENCH_REDIS_SERVER", "/usr/bin/redis-server")


class HarnessError(RuntimeError):
    """A process did not start, answer or stop as expected."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Group:
    """One started process and its descendants, stopped together."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        log: Path,
        cwd: Path,
        stdin: int | None = None,
        stdout: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self._log_handle = open(log, "ab")  # noqa: SIM115 - the child writes to it until stop() closes it
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            start_new_session=True,
            stdin=stdin,
            stdout=stdout if stdout is not None else self._log_handle,
            stderr=self._log_handle,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group (a warm shutdown), SIGKILL after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
                _reap_group(self.pid, wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log_handle.close()

    def tail(self, lines: int = 15) -> str:
        """The end of the process's log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _reap_group(pgid: int, wait: float) -> None:
    """Wait until no process of the group is left (children outlive their parent briefly)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class RedisServer(Group):
    """A private, persistence-free redis-server on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        super().__init__(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--loglevel",
                "warning",
            ],
            env=dict(os.environ),
            log=directory / "redis.log",
            cwd=directory,
        )
        self.url = f"redis://127.0.0.1:{self.port}"
        self.command("PING", timeout=10.0)

    def command(self, *words: str, timeout: float = 5.0) -> bytes:
        """Send one inline command; retries until the server answers or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                    sock.sendall((" ".join(words) + "\r\n").encode())
                    return sock.recv(4096)
            except OSError as exc:
                if not self.alive() or time.monotonic() > deadline:
                    raise HarnessError(f"redis-server on port {self.port} does not answer: {self.tail()}") from exc
                time.sleep(0.02)

    def flush(self) -> None:
        """Drop every queue and result (after a drain stopped at its time limit)."""
        self.command("FLUSHALL")


class Client(Group):
    """A client process (benchmarks.client) spoken to with JSON lines."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path, start_timeout: float) -> None:
        super().__init__(argv, env=env, log=log, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.expect("ready", start_timeout)

    def send(self, command: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(command) + "\n").encode())
        self.popen.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The client's next protocol line, which must be ``event``."""
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        line = self.popen.stdout.readline() if ready else b""
        if not line:
            why = "exited" if not self.alive() else f"gave no {event!r} within {timeout:.0f} s"
            raise HarnessError(f"client {' '.join(self.argv[-8:])} {why}:\n{self.tail()}")
        reply = json.loads(line)
        if reply.get("event") != event:
            raise HarnessError(f"client answered {reply!r}, expected {event!r}")
        return reply

    def close(self, timeout: float = 30.0) -> None:
        if self.alive():
            try:
                self.send({"cmd": "exit"})
                self.popen.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.stop(grace=5.0)


def cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and each of its live descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds: dict[int, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds

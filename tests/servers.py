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
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
import redis.sentinel

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
        extra_args: Sequence[str] = (),
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
        self.args += extra_args
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
            # Not the test process's Django (tests.demo_site sets it up in-process): Celery's Django fixup
            # would load the demo's tasks into every other app's worker. The demo's app sets its own.
            **{key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"},
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


# Name the sentinels know the monitored master by (the apps' ``master_name``).
SENTINEL_MASTER = "cbmaster"
# How long a master may stay silent before a sentinel calls it down (Redis's default is 30 s).
DOWN_AFTER_MS = 1000
# How long one failover attempt may take before another sentinel tries (Redis's default: 3 min).
FAILOVER_TIMEOUT_MS = 5000
# A sentinel starts no new failover of a master for twice failover-timeout after its last one (plus a margin).
FAILOVER_PAUSE_SECONDS = 2 * FAILOVER_TIMEOUT_MS / 1000 + 1

# A replica's full sync starts at once (Redis waits 5 s for company by default).
FAST_SYNC = ["--repl-diskless-sync-delay", "0"]


class SentinelSet:
    """A master, a replica and three sentinels watching them, all private and on loopback.

    Two sentinels must agree the master is down (the quorum), and a majority
    elects the one that promotes the replica, as in a production set.
    """

    def __init__(self, sentinels: int = 3, quorum: int = 2, replica_link: Callable[[int], int] | None = None) -> None:
        """``replica_link`` maps the master's port to the one the replica dials (a relay in between)."""
        # Debian's redis-sentinel is redis-server under another name; `redis-server --sentinel` is the same.
        sentinel, server = shutil.which("redis-sentinel"), shutil.which("redis-server")
        if sentinel is None and server is None:
            raise RuntimeError("redis-sentinel is not installed: run scripts/setup.sh (apt-get install redis-sentinel)")
        self.sentinel_argv = [sentinel] if sentinel else [str(server), "--sentinel"]
        self.master = RedisServer(extra_args=FAST_SYNC)
        link = replica_link(self.master.port) if replica_link else self.master.port
        self.replica = RedisServer(extra_args=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(link)])
        self.quorum = quorum
        self.name = SENTINEL_MASTER
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = tempfile.mkdtemp(prefix="cb-sentinel-")
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.retired: list[RedisServer] = []
        self._next_failover = 0.0

    def url(self, db: int = 0) -> str:
        """Every sentinel, ``;``-separated, as kombu and Celery take them."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        wait_until(lambda: _linked(self.replica.client()), 20, "the replica to sync with the master")
        for port in self.sentinel_ports:
            self.sentinels.append(self._start_sentinel(port))
        wait_until(self._all_known, 30, "the sentinels to know the replica and each other")
        return self

    def _start_sentinel(self, port: int) -> subprocess.Popen[bytes]:
        config = Path(self.dir) / f"sentinel-{port}.conf"  # sentinels rewrite their config: one file each
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir}\nloglevel warning\n"
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {self.master.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
        )
        argv = [self.sentinel_argv[0], str(config), *self.sentinel_argv[1:]]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: self._pings_sentinel(process, port), 10, f"redis-sentinel on port {port}")
        return process

    @staticmethod
    def _pings_sentinel(process: subprocess.Popen[bytes], port: int) -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-sentinel exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            return bool(redis.Redis(port=port).ping())
        except redis.RedisError:
            return False

    def _all_known(self) -> bool:
        try:
            for port in self.sentinel_ports:
                sentinel = redis.Redis(port=port, decode_responses=True)
                if not sentinel.sentinel_slaves(SENTINEL_MASTER):
                    return False
                if len(sentinel.sentinel_sentinels(SENTINEL_MASTER)) < len(self.sentinel_ports) - 1:
                    return False
        except redis.RedisError:
            return False
        return True

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[0])

    def _replica_seen_healthy(self) -> bool:
        try:
            for port in self.sentinel_ports:
                replicas = redis.Redis(port=port).sentinel_slaves(self.name)
                if not any(
                    r["port"] == self.replica.port and not (r["is_sdown"] or r["is_disconnected"]) for r in replicas
                ):
                    return False
        except redis.RedisError:
            return False
        return True

    def master_client(self, db: int = 0) -> redis.Redis:
        """A client that asks the sentinels where the master is whenever it (re)connects."""
        sentinel = redis.sentinel.Sentinel([("127.0.0.1", port) for port in self.sentinel_ports])
        return sentinel.master_for(self.name, db=db)

    def master_port(self) -> int | None:
        """The master's port as the first answering sentinel reports it."""
        for port in self.sentinel_ports:
            try:
                address = redis.Redis(port=port).sentinel_get_master_addr_by_name(SENTINEL_MASTER)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def current_master(self) -> RedisServer:
        return self.replica if self.master_port() == self.replica.port else self.master

    def kill_master(self) -> None:
        """SIGKILL the master (the one we started), as a crashed machine would go."""
        self.master.stop(kill=True)

    def rejoin_as_replica(self) -> RedisServer:
        """Start the killed master again, empty, as a replica of the promoted one (its machine came back).

        The roles then swap: ``master`` is the promoted server, ``replica`` the one that came back.
        """
        dead = self.master
        rejoined = RedisServer(dead.port, extra_args=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(self.replica.port)])
        self.retired.append(dead)
        rejoined.start()
        wait_until(lambda: _linked(rejoined.client()), 60, "the old master to sync")
        self.master, self.replica = self.replica, rejoined
        return rejoined

    def fail_over(self, timeout: float = 30) -> float:
        """Kill the master, wait for the promotion, bring the dead one back as a replica; seconds to promotion.

        A second kill waits until the sentinels could promote again: they see the
        replica healthy, and the pause after their last failover is over.
        """
        wait_until(self._replica_seen_healthy, timeout, "every sentinel to see the replica up")
        wait_until(lambda: time.monotonic() >= self._next_failover, timeout, "the sentinels' pause after a failover")
        began = time.monotonic()
        self._next_failover = began + FAILOVER_PAUSE_SECONDS
        self.kill_master()
        self.wait_for_failover(timeout)
        promoted = time.monotonic() - began
        self.rejoin_as_replica()
        return promoted

    def wait_for_failover(self, timeout: float = 30) -> None:
        """Until the sentinels name the replica master and it accepts writes."""
        wait_until(lambda: self.master_port() == self.replica.port, timeout, "the sentinels to promote the replica")
        wait_until(lambda: role(self.replica.client()) == "master", timeout, "the replica to take the master role")

    def stop(self) -> None:
        for process in self.sentinels:
            stop_process(process, grace=10)
        self.sentinels = []
        for server in (self.master, self.replica, *self.retired):
            server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


def _linked(client: redis.Redis) -> bool:
    try:
        return client.info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


def role(client: redis.Redis) -> str | None:
    """The server's replication role ("master" or "slave"), or None while it does not answer."""
    try:
        return str(client.info("replication").get("role"))
    except redis.RedisError:
        return None

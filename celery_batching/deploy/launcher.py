"""Run and supervise one ``celery worker`` process per planned worker.

The launcher is a small process supervisor: it starts each worker of a plan
(see :func:`celery_batching.deploy.devices.plan_workers`) with its own environment,
restarts a worker that dies (with a backoff and a cap per time window, so a
worker that crashes at startup does not spin), and on SIGINT/SIGTERM asks
every worker for a warm shutdown, waits up to a deadline, then kills the
rest. The restart rule is the pure :func:`restart_delay`; the rest is I/O.

Workers run in their own session, so a Ctrl-C in the terminal reaches only
the launcher, which then sends each worker exactly one SIGTERM (a second
SIGINT would turn Celery's warm shutdown into a cold one). On Linux each
worker also gets SIGTERM if the launcher itself is killed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType

from ..errors import ConfigurationError
from .devices import DEVICE_ENV, THREADS_ENV, VISIBLE_ENV, WorkerSpec, configure_threads, parse_device

logger = logging.getLogger(__name__)

# prctl(2) option: signal to deliver to this process when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RestartPolicy:
    """How fast a dead worker is started again."""

    max_restarts: int = 5  # restarts allowed per window; more wait for the window to pass
    window: float = 60.0  # seconds
    base_delay: float = 1.0  # first restart after this many seconds, doubling after each
    max_delay: float = 30.0  # ceiling of the doubling backoff

    def __post_init__(self) -> None:
        if self.max_restarts < 1:
            raise ConfigurationError(f"max_restarts must be >= 1, got {self.max_restarts!r}")
        for name in ("window", "base_delay", "max_delay"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RestartDecision:
    """Restart after ``delay`` seconds; ``limited`` when the per-window cap set the delay."""

    delay: float
    limited: bool


def restart_delay(policy: RestartPolicy, restarts: Sequence[float], now: float) -> RestartDecision:
    """When to restart a worker that died at ``now``, given its earlier restart times.

    The backoff doubles with each restart inside the window (1 s, 2 s, 4 s …
    up to ``max_delay``) and resets once the worker stayed up for a window.
    When ``max_restarts`` restarts already happened inside the window, the
    next one waits until the oldest of them leaves it.
    """
    recent = sorted(t for t in restarts if now - t < policy.window)
    backoff = min(policy.max_delay, policy.base_delay * 2 ** len(recent))
    if len(recent) < policy.max_restarts:
        return RestartDecision(delay=backoff, limited=False)
    window_frees_at = recent[len(recent) - policy.max_restarts] + policy.window
    return RestartDecision(delay=max(backoff, window_frees_at - now), limited=True)


def with_device(specs: Sequence[WorkerSpec], device: str) -> list[WorkerSpec]:
    """The same plan with every worker told to use ``device``; GPU pinning is kept.

    Lets a GPU plan be rehearsed on a machine without GPUs (``--device cpu``).
    """
    device = parse_device(device, "--device")
    return [replace(spec, device=device, env={**spec.env, DEVICE_ENV: device}) for spec in specs]


def with_threads(specs: Sequence[WorkerSpec], threads: int) -> list[WorkerSpec]:
    """The same plan with ``threads`` CPU threads per worker instead of an even split."""
    return [replace(spec, threads=threads, env={**spec.env, THREADS_ENV: str(threads)}) for spec in specs]


def worker_command(
    spec: WorkerSpec,
    app: str,
    loglevel: str = "INFO",
    queues: Sequence[str] = (),
    extra: Sequence[str] = (),
    config: str | None = None,
) -> list[str]:
    """The ``celery worker`` command line of one planned worker."""
    command = [sys.executable, "-m", "celery", "-A", app]
    if config:
        command += ["--config", config]  # a global option: before the subcommand
    command += ["worker", "--pool", "solo", "-n", spec.name]
    command += ["--loglevel", loglevel]
    if queues:
        command += ["-Q", ",".join(queues)]
    return command + list(extra)


def worker_env(spec: WorkerSpec, base: dict[str, str]) -> dict[str, str]:
    """The worker's environment: ours, its pinning, and its thread counts.

    Thread variables the operator exported are kept; the others are set
    here, so they are in place before the worker imports numpy or torch.
    """
    env = {**base, **spec.env}
    configure_threads(spec.threads, env)
    return env


def describe_exit(returncode: int) -> str:
    """``"exited with code 1"`` or ``"was killed by SIGKILL"`` (Popen's negative codes)."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class _Worker:
    """One supervised slot of the plan: its process and restart history."""

    spec: WorkerSpec
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    due: float | None = None  # when a dead worker is to be started again


class _Signals:
    """Turns SIGINT/SIGTERM/SIGCHLD into wake-ups of a select() loop."""

    def __init__(self) -> None:
        self.stop_requests = 0
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def __enter__(self) -> _Signals:
        self._old_fd = signal.set_wakeup_fd(self._write)
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requests += 1
        logger.info("got %s (%d so far)", signal.Signals(signum).name, self.stop_requests)

    def wait(self, timeout: float | None) -> None:
        """Sleep until a signal arrives or ``timeout`` seconds pass."""
        select.select([self._read], [], [], None if timeout is None else max(0.0, timeout))
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the launcher dies (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Keeps one process per worker spec running until told to stop."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        command: Callable[[WorkerSpec], list[str]],
        *,
        policy: RestartPolicy = RestartPolicy(),
        shutdown_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if shutdown_timeout < 0:
            raise ConfigurationError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout!r}")
        self.workers = [_Worker(spec) for spec in specs]
        self.command = command
        self.policy = policy
        self.shutdown_timeout = shutdown_timeout
        self.clock = clock

    def run(self) -> int:
        """Start every worker, keep them up until SIGINT/SIGTERM, then shut down; return 0."""
        with _Signals() as signals:
            for worker in self.workers:
                self._spawn(worker)
            while not signals.stop_requests:
                next_due = self.step(self.clock())
                signals.wait(None if next_due is None else next_due - self.clock())
            self.shutdown(signals)
        return 0

    def step(self, now: float) -> float | None:
        """Notice dead workers, start those whose restart is due; return the next due time."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is not None:
                self._schedule_restart(worker, now)
            if worker.proc is None and worker.due is not None and worker.due <= now:
                worker.restarts = [t for t in worker.restarts if now - t < self.policy.window] + [now]
                self._spawn(worker)
        dues = [w.due for w in self.workers if w.due is not None]
        return min(dues) if dues else None

    def _schedule_restart(self, worker: _Worker, now: float) -> None:
        assert worker.proc is not None
        decision = restart_delay(self.policy, worker.restarts, now)
        logger.warning(
            "worker %s (pid %d) %s; restarting in %.1f s%s",
            worker.spec.name,
            worker.proc.pid,
            describe_exit(worker.proc.returncode),
            decision.delay,
            f" (restart limit: {self.policy.max_restarts} per {self.policy.window:g} s)" if decision.limited else "",
        )
        worker.proc = None
        worker.due = now + decision.delay

    def _spawn(self, worker: _Worker) -> None:
        spec = worker.spec
        worker.proc = subprocess.Popen(
            self.command(spec),
            env=worker_env(spec, dict(os.environ)),
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        worker.due = None
        logger.info(
            "started worker %s pid %d (%s=%r, device %s, %d threads)",
            spec.name,
            worker.proc.pid,
            VISIBLE_ENV,
            spec.env.get(VISIBLE_ENV),
            spec.device,
            spec.threads,
        )

    def shutdown(self, signals: _Signals) -> None:
        """SIGTERM every worker (warm shutdown), wait up to the deadline, SIGKILL the rest.

        A second SIGINT/SIGTERM to the launcher skips the wait.
        """
        running = [(w.spec.name, w.proc) for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for name, proc in running:
            logger.info("stopping worker %s pid %d (SIGTERM)", name, proc.pid)
            proc.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.shutdown_timeout
        requests = signals.stop_requests
        while running and self.clock() < deadline and signals.stop_requests == requests:
            signals.wait(deadline - self.clock())
            running = [(name, proc) for name, proc in running if proc.poll() is None]
        for name, proc in running:
            logger.warning("worker %s pid %d did not stop in time; killing it", name, proc.pid)
            proc.kill()
            proc.wait()
        logger.info("all workers stopped")

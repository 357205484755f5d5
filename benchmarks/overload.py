"""Overload: a slow model offered ten times its rate, with a queue bound and a deadline per request.

``python -m benchmarks.overload [--seconds 10] [--load 10] [--deadline 2]``

A private redis-server and one worker of ``tests.apps.overload`` whose model
takes a fixed time per batch (its rate: batch size / batch time). One client
thread sends open-loop at ``--load`` times that rate, each task with
``expires`` = the deadline, on a queue bounded at the rate times half the
deadline (so an accepted request waits at most about half its deadline).
Refused calls raise ``QueueFull`` at the push; accepted ones are awaited
afterwards and timed from their send to the worker's ``date_done``.

It prints the accepted requests' p50/p99 latency, how many met their
deadline, how many the worker expired unrun, how many were lost (no result),
the refused share, and how fast refusals came (p50/p99). Exit status 1 when
anything was lost. Not part of the test suite; ``tests/test_overload.py``
runs :func:`run` at a small scale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

from celery.exceptions import TaskRevokedError

from benchmarks.stats import percentile
from celery_batching import QueueFull
from tests.fault_tools import load_app
from tests.servers import RedisServer, Worker

APP = "tests.apps.overload"
QUEUE = "overload.slow"


@dataclass(frozen=True)
class Config:
    seconds: float = 10.0  # how long the client offers load
    load: float = 10.0  # offered rate, as a multiple of the model's rate
    deadline: float = 2.0  # each request's expires, seconds after its send
    batch_size: int = 4
    batch_seconds: float = 0.05
    queue_bound: int | None = None  # None: what the model drains in half a deadline

    @property
    def rate(self) -> float:
        """The model's rate, samples per second."""
        return self.batch_size / self.batch_seconds

    @property
    def bound(self) -> int:
        """The queue bound: as given, or what the model drains in half a deadline."""
        return self.queue_bound or max(1, int(self.rate * self.deadline / 2))


@dataclass
class Figures:
    sent: int = 0
    offered_seconds: float = 0.0
    accepted_ms: list[float] = field(default_factory=list)  # send to date_done, of those that succeeded
    met_deadline: int = 0
    expired: int = 0  # refused by the worker unrun: their deadline passed in the queue
    lost: int = 0  # no final result within the deadline and a margin
    wrong: int = 0
    refused_ms: list[float] = field(default_factory=list)  # how long .delay() took to raise QueueFull

    @property
    def accepted(self) -> int:
        return self.sent - len(self.refused_ms)


def offer(task: Any, config: Config) -> tuple[Figures, list[tuple[int, float, Any]]]:
    """Send open-loop at ``config.load`` times the model's rate; returns figures and the accepted calls."""
    figures = Figures()
    accepted: list[tuple[int, float, Any]] = []
    interval = 1.0 / (config.rate * config.load)
    started = time.perf_counter()
    while (now := time.perf_counter()) - started < config.seconds:
        due = started + figures.sent * interval
        if due > now:
            time.sleep(due - now)
        sample = figures.sent
        figures.sent += 1
        sent_at, began = time.time(), time.perf_counter()
        try:
            result = task.apply_async((sample,), expires=config.deadline)
        except QueueFull:
            figures.refused_ms.append((time.perf_counter() - began) * 1000)
            continue
        accepted.append((sample, sent_at, result))
    figures.offered_seconds = time.perf_counter() - started
    return figures, accepted


def collect(figures: Figures, accepted: list[tuple[int, float, Any]], config: Config) -> None:
    """Wait for every accepted call (bounded: its deadline plus a margin) and file its outcome."""
    margin = 30.0
    for sample, sent_at, result in accepted:
        left = sent_at + config.deadline + margin - time.time()
        try:
            value = result.get(timeout=max(left, 0.1))
        except TaskRevokedError:
            figures.expired += 1
            continue
        except Exception:  # noqa: BLE001 - a timeout or anything else: no result came
            figures.lost += 1
            continue
        if value != 2 * sample:
            figures.wrong += 1
            continue
        done = result.date_done
        done = done if done.tzinfo else done.replace(tzinfo=timezone.utc)
        figures.accepted_ms.append((done.timestamp() - sent_at) * 1000)
        figures.met_deadline += done.timestamp() <= sent_at + config.deadline


def run(config: Config) -> Figures:
    """One overload run on a private Redis and worker; the figures."""
    redis_server = RedisServer().start()
    worker = None
    try:
        url = redis_server.url(0)
        env = {
            "CB_TEST_BROKER": url,
            "CB_SLOW_BATCH_SECONDS": str(config.batch_seconds),
            "CB_SLOW_BATCH_SIZE": str(config.batch_size),
        }
        worker = Worker(APP, url, "-Q", QUEUE, env=env).start(120)
        app_module = load_app(APP, url)  # a copy of its own: the module's app is bound to this run's Redis
        _, task = app_module.declare(app_module.make_app(url, redis_server.url(1)))
        task.max_queue_depth = config.bound
        task.delay(0).get(timeout=30)  # warm: the worker serves, the client's connections exist
        figures, accepted = offer(task, config)
        collect(figures, accepted, config)
        return figures
    finally:
        if worker is not None:
            worker.stop()
        redis_server.cleanup()


def report(config: Config, figures: Figures) -> str:
    offered = figures.sent / figures.offered_seconds if figures.offered_seconds else 0.0
    refused = len(figures.refused_ms)
    lines = [
        f"model: {config.rate:.0f} samples/s ({config.batch_size} per {config.batch_seconds * 1000:.0f} ms); "
        f"offered {offered:.0f}/s ({offered / config.rate:.1f}x) for {figures.offered_seconds:.1f} s; "
        f"bound {config.bound}, deadline {config.deadline:.1f} s",
        f"sent {figures.sent}: accepted {figures.accepted} ({100 * figures.accepted / max(figures.sent, 1):.1f}%), "
        f"refused {refused} ({100 * refused / max(figures.sent, 1):.1f}%)",
    ]
    if figures.accepted_ms:
        lines.append(
            f"accepted: p50 {percentile(figures.accepted_ms, 50):.0f} ms, "
            f"p99 {percentile(figures.accepted_ms, 99):.0f} ms; "
            f"met the deadline {figures.met_deadline}/{figures.accepted}, expired unrun {figures.expired}, "
            f"lost {figures.lost}, wrong {figures.wrong}"
        )
    if figures.refused_ms:
        lines.append(
            f"refused (QueueFull at the push): p50 {percentile(figures.refused_ms, 50):.2f} ms, "
            f"p99 {percentile(figures.refused_ms, 99):.2f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=Config.seconds, help="how long load is offered")
    parser.add_argument("--load", type=float, default=Config.load, help="offered rate / the model's rate")
    parser.add_argument("--deadline", type=float, default=Config.deadline, help="each request's expires (s)")
    parser.add_argument("--batch-size", type=int, default=Config.batch_size)
    parser.add_argument("--batch-seconds", type=float, default=Config.batch_seconds)
    parser.add_argument("--bound", type=int, default=None, help="the queue bound (default: half a deadline's work)")
    args = parser.parse_args(argv)
    config = Config(args.seconds, args.load, args.deadline, args.batch_size, args.batch_seconds, args.bound)
    tempfile.tempdir = tempfile.mkdtemp(prefix="cb-overload-")  # worker logs of this run, kept together
    figures = run(config)
    print(report(config, figures))
    return 1 if figures.lost or figures.wrong else 0


if __name__ == "__main__":
    sys.exit(main())

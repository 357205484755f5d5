"""Runs one case (a system, a model, a worker count) for every repetition.

Per case: a private redis-server, the client processes (kept for all
repetitions), and per repetition the workloads in a fixed order:

1. drain: the clients queue ``drain`` requests per worker while no worker
   runs. Where the queue is in Redis, every list of the broker db is then
   moved aside in one atomic step (:mod:`benchmarks.queues`), the workers
   start, and once all have loaded their model and answer a ping the lists
   come back in one step: all workers meet a full queue at the same instant,
   so start-up skew (a second or more between workers) is no part of the
   figure. Throughput is from that instant to the last predict end, read from
   the model's own log, so it is the worker side alone. In-process systems
   run the queue as it fills (see :func:`benchmarks.stats.from_calls`);
2. light: one client, one request in flight;
3. saturation: ``clients`` processes with ``in_flight`` requests in flight in all;
4. http (opt-in): the Django demo under gunicorn and ``wrk``, for ``ours``
   and ``naive`` on minilm only (:mod:`benchmarks.demo_http`).

The workers started for the drain serve the light and saturation workloads
too; each repetition restarts them for its drain. The http workload stops
them and runs the demo's own workers instead, for its length only. A
workload is one method of :class:`CaseRun`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import demo_http, stats, trace
from .knobs import DEVICE_ENV, MODEL_ENV, REDIS_ENV
from .procs import Client, Group, HarnessError, RedisServer, cpu_seconds
from .queues import HeldQueues
from .stats import Measurement
from .systems import REPO, System

# Workloads in the order a repetition runs them; all but http run by default.
WORKLOADS = ("drain", "light", "saturation", "http")
DEFAULT_WORKLOADS = ("drain", "light", "saturation")
# Workloads that need the case's own workers running and its clients warmed up.
SERVED = ("light", "saturation")


@dataclass(frozen=True)
class Sizes:
    """How much load each workload sends."""

    saturation: int = 4000  # requests
    drain: int = 4000  # requests per worker queued before the workers start
    light: int = 200  # requests, one at a time
    in_flight: int = 64  # saturation: requests in flight, all clients together
    clients: int = 4  # saturation: client processes for systems behind Redis
    seconds: float = 30.0  # a workload stops sending after this long
    warmup: int = 4  # requests each client sends before measuring
    timeout: float = 120.0  # seconds one request may take
    http_seconds: float = 10.0  # http: how long wrk sends


@dataclass(frozen=True)
class Case:
    system: System
    model: str
    workers: int


def workloads_of(case: Case, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The workloads of ``wanted`` that apply to ``case``, in running order."""
    return tuple(
        w for w in WORKLOADS if w in wanted and (w != "http" or demo_http.applies(case.system.name, case.model))
    )


class CaseRun:
    """The processes of one case; use as a context manager.

    ``with_clients``: start the load-generating clients (every workload but http needs them).
    """

    def __init__(self, case: Case, sizes: Sizes, device: str, with_clients: bool = True) -> None:
        self.case, self.sizes, self.device = case, sizes, device
        self.with_clients = with_clients
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{case.system.name}-{case.model}-"))
        self.trace_dir = self.dir / "trace"
        self.trace_dir.mkdir()
        self.redis: RedisServer | None = None
        self.clients: list[Client] = []
        self.workers: list[Group] = []
        self._next_index = 0

    # -- set-up -----------------------------------------------------------

    def __enter__(self) -> CaseRun:
        try:
            if self.case.system.uses_redis:
                self.redis = RedisServer(self.dir)
            count = self.sizes.clients if self.case.system.uses_redis else 1
            self.clients = [self._start_client(i) for i in range(count if self.with_clients else 0)]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for client in self.clients:
            client.close()
        self.stop_workers()
        if self.redis is not None:
            self.redis.stop()
        if exc_info[0] is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(
            {
                MODEL_ENV: self.case.model,
                DEVICE_ENV: self.device,
                trace.TRACE_ENV: str(self.trace_dir),
                "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "CELERY_BATCHING_DEVICE": self.device,
                # Idle OpenMP threads sleep instead of spinning: an in-process system whose
                # predict moves between threads would otherwise compete with its own spinners.
                "OMP_WAIT_POLICY": "PASSIVE",
            }
        )
        if self.redis is not None:
            env[REDIS_ENV] = self.redis.url
        return env

    def _start_client(self, index: int) -> Client:
        system = self.case.system
        argv = [
            str(system.python()),
            "-m",
            "benchmarks.client",
            "--system",
            system.name,
            "--model",
            self.case.model,
            "--device",
            self.device,
            "--workers",
            str(self.case.workers),
            "--timeout",
            str(self.sizes.timeout),
        ]
        if self.redis is not None:
            argv += ["--redis-url", self.redis.url]
        return Client(argv, env=self.env(), log=self.dir / f"client{index}.log", cwd=REPO, start_timeout=300.0)

    def start_workers(self) -> None:
        trace.clear_loaded(self.trace_dir)
        self.workers = [
            Group(argv, env=self.env(), log=self.dir / f"worker{i}.log", cwd=REPO)
            for i, argv in enumerate(self.case.system.worker_commands(self.case.workers))
        ]

    def stop_workers(self) -> None:
        for group in self.workers:
            group.stop()
        self.workers = []

    def wait_workers_ready(self, timeout: float = 300.0) -> None:
        """Every worker has loaded its model and, for Celery, answers a ping."""
        deadline = time.monotonic() + timeout
        while trace.loaded_count(self.trace_dir) < self.case.workers:
            self._check_workers_alive()
            if time.monotonic() > deadline:
                raise HarnessError(f"workers of {self.case} did not load their model in {timeout:.0f} s")
            time.sleep(0.05)
        names = self.case.system.node_names(self.case.workers)
        if names and self.redis is not None:
            _wait_for_pings(f"{self.redis.url}/0", names, deadline, self._check_workers_alive)

    def ready_to_serve(self) -> None:
        """Workers running and ready, every client warmed up: then latencies mean something."""
        if self.case.system.external_workers:
            if not self.workers:
                self.start_workers()
            self.wait_workers_ready()
        self.warm_up()

    def _check_workers_alive(self) -> None:
        for group in self.workers:
            if not group.alive():
                raise HarnessError(f"worker {' '.join(group.argv)} exited:\n{group.tail()}")

    def _indices(self, count: int) -> int:
        """A fresh range of sample indices (every request of a case is a new sample)."""
        offset, self._next_index = self._next_index, self._next_index + count
        return offset

    # -- measuring ----------------------------------------------------------

    def cpu(self) -> dict[str, dict[int, float]]:
        """Per-process CPU seconds now, by part (a client's children count as workers)."""
        parts: dict[str, dict[int, float]] = {"client": {}, "worker": {}, "redis": {}}
        for client in self.clients:
            for pid, seconds in cpu_seconds(client.pid).items():
                parts["client" if pid == client.pid else "worker"][pid] = seconds
        for group in self.workers:
            parts["worker"].update(cpu_seconds(group.pid))
        if self.redis is not None:
            parts["redis"].update(cpu_seconds(self.redis.pid))
        return parts

    def warm_up(self) -> None:
        """A few requests per client, so connections are open and workers answer."""
        for client in self.clients:
            client.send(
                {
                    "cmd": "warmup",
                    "requests": self.sizes.warmup,
                    "offset": self._indices(self.sizes.warmup),
                    "seconds": self.sizes.timeout,
                }
            )
        for client in self.clients:
            reply = client.expect("warmup", self.sizes.timeout + 60)
            if reply["failed"]:
                raise HarnessError(f"warm-up requests of {self.case} failed:\n{reply['first_error']}")

    def closed_loop(self, clients: list[Client], in_flight: int, requests: int) -> Measurement:
        """``in_flight`` requests in flight across ``clients``, ``requests`` in all."""
        before = self.cpu()
        since = time.time()
        outs = []
        for i, (client, share) in enumerate(zip(clients, _shares(requests, len(clients)))):
            out = self.dir / f"out{i}.json"
            outs.append(out)
            client.send(
                {
                    "cmd": "run",
                    "requests": share,
                    "offset": self._indices(share),
                    "threads": max(1, in_flight // len(clients)),
                    "out": str(out),
                    "seconds": self.sizes.seconds,
                }
            )
        for client in clients:
            client.expect("run", self.sizes.seconds + self.sizes.timeout + 60)
        until = time.time()
        after = self.cpu()
        records, first_error = _read_outcomes(outs)
        measurement = stats.from_records(records, trace.window(trace.read_calls(self.trace_dir), since, until))
        measurement.cpu = stats.cpu_per_request(before, after, measurement.requests)
        measurement.capped = measurement.requests < requests
        measurement.first_error = first_error
        return measurement

    def light(self) -> Measurement:
        return self.closed_loop(self.clients[:1], 1, self.sizes.light)

    def saturation(self) -> Measurement:
        return self.closed_loop(self.clients, self.sizes.in_flight, self.sizes.saturation)

    def drain(self) -> Measurement:
        """Fill the queue, then let every worker at it at once; figures from the model's own log."""
        self.stop_workers()
        count = self.sizes.drain * self.case.workers
        since = time.time()
        clients = self.clients
        for client, share in zip(clients, _shares(count, len(clients))):
            client.send(
                {"cmd": "fill", "requests": share, "offset": self._indices(share), "seconds": self.sizes.seconds}
            )
        sent = sum(client.expect("fill", self.sizes.seconds + self.sizes.timeout + 60)["sent"] for client in clients)
        released = cpu_at_release = None
        if self.case.system.external_workers:
            released, cpu_at_release = self._start_workers_on_held_queue(sent)
        calls = self._wait_for_drain(since if released is None else released, sent)
        measurement = stats.from_calls(calls, released)
        if cpu_at_release is not None:  # in-process systems: the model's cycles are not a drain's cost
            measurement.cpu = stats.cpu_per_request(cpu_at_release, self.cpu(), measurement.requests)
        if measurement.requests < sent:  # stopped at the time limit: drop what is left
            measurement.capped = True
            self.stop_workers()
            if self.redis is not None:
                self.redis.flush()
            for client in clients:
                client.send({"cmd": "discard"})
                client.expect("discard", 60)
            return measurement
        records, first_error = self._collect(clients)
        measurement.failed = sum(1 for *_, ok in records if not ok)
        measurement.first_error = first_error
        measurement.capped = sent < count
        return measurement

    def _start_workers_on_held_queue(self, sent: int) -> tuple[float, dict[str, dict[int, float]]]:
        """Start the workers with the filled queue out of their reach, hand it over once all are ready.

        Returns the wall-clock time of the hand-over, from which the drain is
        measured (start-up skew between workers is then no part of it), and
        every process's CPU then.
        """
        if self.redis is None:
            raise HarnessError(f"{self.case.system.name} has workers but no Redis to hold its queue in")
        held = HeldQueues(self.redis.url)
        try:
            queued = held.hold()
            if queued < sent:
                raise HarnessError(f"only {queued} of {sent} drain requests were found in Redis lists")
            self.start_workers()
            self.wait_workers_ready()
            cpu = self.cpu()
            released = time.time()
            held.release()
        finally:
            held.close()
        return released, cpu

    def _collect(self, clients: list[Client]) -> tuple[list[list], str | None]:
        """Every drain result, fetched and checked by the clients that sent them."""
        outs = [self.dir / f"drain{i}.json" for i in range(len(clients))]
        for client, out in zip(clients, outs):
            client.send({"cmd": "collect", "out": str(out)})
        for client in clients:
            client.expect("collect", self.sizes.timeout + 60)
        return _read_outcomes(outs)

    def http(self) -> Measurement:
        """The demo site's endpoint for this system under ``wrk`` (:mod:`benchmarks.demo_http`)."""
        self.stop_workers()  # the bench workers: the demo runs its own
        redis_url = self.redis.url if self.redis is not None else None
        env = demo_http.site_env(self.env(), redis_url)
        deadline = time.monotonic() + 300.0
        site = None
        try:
            if redis_url is not None:
                self.workers = [
                    Group(argv, env=env, log=self.dir / f"demo-worker{i}.log", cwd=REPO)
                    for i, argv in enumerate(demo_http.worker_commands(self.case.workers))
                ]
                _wait_for_pings(
                    f"{redis_url}/{demo_http.DEMO_DB}",
                    demo_http.node_names(self.case.workers),
                    deadline,
                    self._check_workers_alive,
                )
            site = demo_http.DemoSite(env, self.dir / "web.log", threads=self.sizes.in_flight)
            path = demo_http.ENDPOINTS[self.case.system.name]
            site.warm_up(path, self.sizes.warmup, deadline, self._check_workers_alive)
            return demo_http.wrk(site.url + path, self.sizes.in_flight, self.sizes.http_seconds, self.dir / "wrk.log")
        finally:
            if site is not None:
                site.stop()
            self.stop_workers()

    def _wait_for_drain(self, since: float, sent: int) -> list[trace.Call]:
        """The drain's predict calls, once all ``sent`` samples ran or its time is up."""
        hard_deadline = time.monotonic() + self.sizes.seconds + 300.0
        while True:
            calls = trace.window(trace.read_calls(self.trace_dir), since, float("inf"))
            done = sum(call.samples for call in calls)
            if done >= sent:
                return calls
            if calls and time.time() - calls[0].start > self.sizes.seconds:
                return calls
            self._check_workers_alive()
            if time.monotonic() > hard_deadline:
                raise HarnessError(f"drain of {self.case} stalled at {done}/{sent} samples")
            time.sleep(0.02)


def _read_outcomes(paths: list[Path]) -> tuple[list[list], str | None]:
    """The records the clients wrote, all together, and the first error any saw."""
    records, first_error = [], None
    for path in paths:
        payload = json.loads(path.read_text())
        records += payload["records"]
        first_error = first_error or payload["first_error"]
    return records, first_error


def _shares(requests: int, parts: int) -> list[int]:
    """``requests`` split as evenly as can be into ``parts``."""
    return [requests // parts + (1 if i < requests % parts else 0) for i in range(parts)]


def _wait_for_pings(broker_url: str, names: list[str], deadline: float, check: Callable[[], None]) -> None:
    """Until every Celery node in ``names`` answers a control ping; ``check`` raises if one died."""
    from celery import Celery

    app = Celery("bench_harness", broker=broker_url)
    try:
        missing = set(names)
        while missing:
            check()
            for reply in app.control.ping(destination=sorted(missing), timeout=0.5):
                missing -= set(reply)
            if missing and time.monotonic() > deadline:
                raise HarnessError(f"celery workers {sorted(missing)} do not answer pings")
    finally:
        app.close()


def run_case(
    case: Case,
    sizes: Sizes,
    workloads: tuple[str, ...],
    reps: int,
    device: str,
    on_result: Callable[[int, str, Measurement], None],
) -> list[dict[str, Measurement]]:
    """Every repetition of ``case``; ``on_result(rep, workload, measurement)`` as each ends."""
    results: list[dict[str, Measurement]] = []
    mine = workloads_of(case, workloads)
    with CaseRun(case, sizes, device, with_clients=mine != ("http",)) as run:
        for rep in range(reps):
            figures: dict[str, Measurement] = {}
            for workload in mine:
                if workload in SERVED and not figures.keys() & set(SERVED):
                    run.ready_to_serve()
                figures[workload] = getattr(run, workload)()
                on_result(rep, workload, figures[workload])
            results.append(figures)
    return results

"""Soak run: many tasks through workers that keep being killed; nothing may be lost.

``python -m benchmarks.soak [--tasks 100000] [--workers 3] [--fault-every 4] [--failover-every 0]
[--prefix tenant:] [--write-latency 0.1]``

A private redis-server, ``--workers`` celery workers of ``tests.apps.faulty``
(its ``faulty.soak`` task), and ``--clients`` client threads that each send
chunks with ``submit_many`` and wait on them with ``gather``. Meanwhile a
supervisor picks a worker at random every few seconds, sends it SIGKILL or
SIGTERM, and starts it again. A few samples are poison (they crash their
batch). Worker 0 is never faulted: its memory over the run is the RSS figure.
With ``--failover-every``, broker and results live on a Sentinel set
(tests.servers.SentinelSet) whose master is killed now and then; the killed one
comes back as the promoted replica's replica. ``--prefix`` runs client and
workers under kombu's ``global_keyprefix``; ``--write-latency`` puts the
workers' result backend behind a relay that delays every round trip (a slow
result store, which must slow claiming rather than let claims outlive the
visibility timeout).

It reports lost tasks (no final result in the end: must be 0), wrong results,
samples the model ran more than once (expected after kills: at-least-once),
results announced more than once (should be 0), and RSS growth. Exit status 1
when anything was lost or wrong. Not part of the test suite (minutes long).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from celery_batching import SendOutcomeUnknown, gather, submit_many
from tests.fault_tools import Announcements, Broker, Records, load_app
from tests.lag_proxy import LagProxy
from tests.servers import RedisServer, SentinelSet, Worker, wait_until

APP = "tests.apps.faulty"
QUEUE = "faulty.soak"
# How long a dead worker's claims stay invisible before another worker takes them back.
VISIBILITY_TIMEOUT = "5"
# Longest a client waits for one chunk: a kill costs up to the visibility timeout plus a restore cycle.
CHUNK_TIMEOUT = 300.0
# Longest the end of a run waits for leftover claims: the visibility timeout plus two restore cycles, with margin.
DRAIN_SECONDS = float(VISIBILITY_TIMEOUT) + 30.0
# Pause before a chunk is sent again while no Redis master answers.
RESEND_PAUSE_SECONDS = 0.5


@dataclass
class Tally:
    """What the clients saw, merged across threads."""

    sent: int = 0
    succeeded: int = 0
    poison_failed: int = 0
    wrong: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    chunk_seconds: list[float] = field(default_factory=list)
    resent_chunks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def sample_plan(total: int, poison_rate: float, rng: random.Random) -> list[int]:
    """Samples 0..total-1, with a few replaced by their negative (poison) twin."""
    return [-(i + 1) if rng.random() < poison_rate else i for i in range(total)]


def check_chunk(samples: list[int], outcomes: list, tally: Tally) -> None:
    """Each sample must come back doubled, each poison sample as its own ValueError."""
    with tally.lock:
        for sample, outcome in zip(samples, outcomes):
            if sample < 0 and isinstance(outcome, ValueError) and f"poison sample {sample}" in str(outcome):
                tally.poison_failed += 1
            elif sample >= 0 and outcome == 2 * sample:
                tally.succeeded += 1
            else:
                tally.wrong.append(f"{sample} -> {outcome!r}")


def client(task, chunks: list[list[int]], tally: Tally) -> None:
    """One client thread: send a chunk, wait for all of it, next (Celery's backend is per thread)."""
    for samples in chunks:
        sent = time.monotonic()
        results = send_until_accepted(task, samples, tally)
        with tally.lock:
            tally.sent += len(samples)
        try:
            outcomes = gather(results, timeout=CHUNK_TIMEOUT, propagate=False)
            tally.chunk_seconds.append(time.monotonic() - sent)
        except Exception as exc:  # noqa: BLE001 - reported, then checked against Redis at the end
            with tally.lock:
                tally.timed_out += [r.id for r in results]
            print(f"  client: a chunk did not finish: {type(exc).__name__}: {exc}", flush=True)
            continue
        check_chunk(samples, outcomes, tally)


def send_until_accepted(task, samples: list[int], tally: Tally) -> list:
    """``submit_many``, sent again while no Redis master answers (a failover); counts the resends.

    A push cut off mid-command may have landed: a resend can then run the samples
    twice (under new task ids), which ``samples_run_more_than_once`` shows.
    """
    while True:
        try:
            return submit_many(task, samples)
        except (redis.ConnectionError, redis.TimeoutError, SendOutcomeUnknown):
            with tally.lock:
                tally.resent_chunks += 1
            time.sleep(RESEND_PAUSE_SECONDS)


class Supervisor:
    """Keeps ``n`` workers up, and injects faults into all but worker 0."""

    def __init__(self, redis_url: str, n: int, env: dict[str, str], rng: random.Random) -> None:
        self.redis_url = redis_url
        self.env = env
        self.rng = rng
        self.workers = [self._new(slot) for slot in range(n)]
        self.faults: Counter = Counter()
        self.logs: list[Path] = []

    def _new(self, slot: int) -> Worker:
        return Worker(
            APP,
            self.redis_url,
            "-Q",
            f"{QUEUE},celery",
            name=f"soak{slot}-{time.monotonic_ns()}@localhost",
            env=self.env,
        )

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def fault(self) -> None:
        if len(self.workers) < 2:
            return
        slot = self.rng.randrange(1, len(self.workers))
        kind = self.rng.choice(["SIGKILL", "SIGKILL", "SIGTERM"])
        victim = self.workers[slot]
        victim.signal(getattr(signal, kind))
        victim.wait(90)
        self.logs.append(victim.log_path)
        self.faults[kind] += 1
        self.workers[slot] = self._new(slot)
        self.workers[slot].start()

    def rss_mib(self) -> float:
        return psutil.Process(self.workers[0].process.pid).memory_info().rss / (1 << 20)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
            self.logs.append(worker.log_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=3, help="worker 0 is never faulted")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=500, help="tasks per submit_many")
    parser.add_argument("--fault-every", type=float, default=4.0, help="mean seconds between faults")
    parser.add_argument("--poison-rate", type=float, default=0.0005)
    parser.add_argument(
        "--predict-seconds", type=float, default=0.005, help="time one predict takes (so kills land mid-batch)"
    )
    parser.add_argument(
        "--failover-every",
        type=float,
        default=0.0,
        help="mean seconds between master kills, on a Sentinel set (master, replica, 3 sentinels); 0: no Sentinel",
    )
    parser.add_argument("--prefix", default="", help="kombu's global_keyprefix for client and workers")
    parser.add_argument(
        "--write-latency",
        type=float,
        default=0.0,
        help="seconds added to each round trip of the workers to the backend",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    # A SIGTERM (a `timeout` around the run) ends through the finally below: no server or worker outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    record_dir = Path(tempfile.mkdtemp(prefix="cb-soak-"))
    if args.write_latency and args.failover_every:
        parser.error("--write-latency proxies one redis-server; it does not follow a Sentinel failover")
    store = Store(args.failover_every > 0)
    slow_store = LagProxy(store.current().port, args.write_latency / 2).start() if args.write_latency else None
    worker_backend = slow_store.url(1) if slow_store else store.backend_url
    env = {
        "CB_RECORD_DIR": str(record_dir),
        "CB_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT,
        "CB_BATCH_SECONDS": str(args.predict_seconds),
        "CB_TEST_BACKEND": worker_backend,
        "CB_KEYPREFIX": args.prefix,
    }
    supervisor = Supervisor(store.broker_url, args.workers, env, rng)
    os.environ["CB_KEYPREFIX"] = args.prefix  # for the client's copy of the app
    app = load_app(APP, store.broker_url, store.backend_url)
    samples = sample_plan(args.tasks, args.poison_rate, rng)
    chunks = [samples[i : i + args.chunk] for i in range(0, len(samples), args.chunk)]
    tally = Tally()
    try:
        supervisor.start()
        with Announcements(store.results_client()) as announced:
            report = run(args, app, chunks, supervisor, store, tally, rng)
            try:
                wait_until(
                    lambda: len(announced.counts) >= tally.succeeded + tally.poison_failed,
                    30,
                    "every announcement to arrive",
                )
            except TimeoutError:
                if not store.sentinel:
                    raise  # with failovers, announcements made while the listener reconnected are missed
        report["drain_seconds"] = drain(Broker(store.current().client(0), QUEUE, args.prefix))
        report.update(settle(store.current(), samples, record_dir, announced, tally, args.prefix))
    finally:
        supervisor.stop()
        if slow_store:
            slow_store.close()
        store.cleanup()
    report["faults"] = dict(supervisor.faults)
    report["promotion_seconds"] = store.promotions
    print(json.dumps(report, indent=2))
    if not args.keep_logs:
        for log in supervisor.logs:
            log.unlink(missing_ok=True)
    return 0 if report["lost"] == 0 and report["wrong"] == 0 else 1


class Store:
    """The Redis the soak runs on: one redis-server, or a Sentinel set whose master gets killed."""

    def __init__(self, sentinel: bool) -> None:
        self.sentinel = SentinelSet().start() if sentinel else None
        self.plain = None if sentinel else RedisServer().start()
        self.broker_url = self.sentinel.url(0) if self.sentinel else self.plain.url(0)
        self.backend_url = self.sentinel.url(1) if self.sentinel else self.plain.url(1)
        self.promotions: list[float] = []

    def current(self) -> RedisServer:
        return self.sentinel.master if self.sentinel else self.plain

    def results_client(self) -> redis.Redis:
        """A client of the results database that follows failovers."""
        return self.sentinel.master_client(1) if self.sentinel else self.plain.client(1)

    def fail_over(self) -> None:
        self.promotions.append(round(self.sentinel.fail_over(), 2))

    def cleanup(self) -> None:
        if self.sentinel:
            self.sentinel.stop()
        else:
            self.plain.cleanup()


def run(
    args, app, chunks: list[list[int]], supervisor: Supervisor, store: Store, tally: Tally, rng: random.Random
) -> dict:
    """Clients send and wait while the supervisor injects faults; returns timing and memory figures."""
    threads = [
        threading.Thread(target=client, args=(app.soak, chunks[i :: args.clients], tally), daemon=True)
        for i in range(args.clients)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    rss_start = rss_peak = None
    next_fault = began + rng.expovariate(1 / args.fault_every)
    next_failover = began + rng.expovariate(1 / args.failover_every) if store.sentinel else float("inf")
    next_report = began + 10
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.2)
        now = time.monotonic()
        rss = supervisor.rss_mib()
        if rss_start is None and tally.sent >= args.tasks // 10:
            rss_start = rss  # after warm-up: the first tenth of the tasks
        rss_peak = max(rss_peak or rss, rss)
        if now >= next_fault:
            supervisor.fault()
            next_fault = time.monotonic() + rng.expovariate(1 / args.fault_every)
        if now >= next_failover:
            store.fail_over()
            supervisor.faults["failover"] += 1
            next_failover = time.monotonic() + rng.expovariate(1 / args.failover_every)
        if now >= next_report:
            done = tally.succeeded + tally.poison_failed
            print(
                f"  {now - began:6.0f}s sent {tally.sent} done {done} faults {dict(supervisor.faults)} "
                f"rss0 {rss:.1f} MiB",
                flush=True,
            )
            next_report = now + 10
    seconds = time.monotonic() - began
    rss_end = supervisor.rss_mib()
    return {
        "tasks": args.tasks,
        "seconds": round(seconds, 1),
        "tasks_per_second": round(args.tasks / seconds, 1),
        "worker0_rss_mib": {
            "after_warmup": round(rss_start or rss_end, 1),
            "end": round(rss_end, 1),
            "peak": round(rss_peak or rss_end, 1),
            "growth": round(rss_end - (rss_start or rss_end), 1),
        },
    }


def drain(broker: Broker) -> float | None:
    """Wait for the queue and the claims to empty; seconds it took, ``None`` if they did not.

    A worker killed after storing a batch but before acknowledging it leaves
    claims whose results are all in: restored after the visibility timeout,
    they are acknowledged as duplicates without running again.
    """
    began = time.monotonic()
    deadline = began + DRAIN_SECONDS
    while broker.snapshot() != (0, 0):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return round(time.monotonic() - began, 1)


def settle(
    redis_server: RedisServer,
    samples: list[int],
    record_dir: Path,
    announced: Announcements,
    tally: Tally,
    prefix: str,
) -> dict:
    """Compare what should exist with what Redis and the model's records say."""
    results = redis_server.client(1)
    stored = results.dbsize()
    records = Records(record_dir)
    runs = records.runs("soak")
    starts = records.runs("soak-start")
    near_poison = {s for call in records.calls("soak-start") if min(call["batch"]) < 0 for s in call["batch"]}
    broker = Broker(redis_server.client(0), QUEUE, prefix)
    queued, unacked = broker.snapshot()
    return {
        "succeeded": tally.succeeded,
        "poison_failed": tally.poison_failed,
        "wrong": len(tally.wrong),
        "wrong_examples": tally.wrong[:5],
        "lost": len(samples) - stored,
        "client_timeouts": len(tally.timed_out),
        "resent_chunks": tally.resent_chunks,
        "slowest_chunk_seconds": round(max(tally.chunk_seconds, default=0.0), 1),
        "chunks_slower_than_visibility_timeout": sum(1 for t in tally.chunk_seconds if t > float(VISIBILITY_TIMEOUT)),
        "results_stored": stored,
        "left_queued": queued,
        "left_unacked": unacked,
        "stale_unacked_index": len(broker.unacked_index()),
        "misplaced_keys": len(broker.misplaced_keys()),
        "samples_started_again": sum(1 for s, count in starts.items() if count > 1 and s not in near_poison),
        "executions_beyond_first": sum(count - 1 for count in runs.values() if count > 1),
        "samples_run_more_than_once": sum(1 for count in runs.values() if count > 1),
        "announced_more_than_once": sum(1 for count in announced.counts.values() if count > 1),
        "announcements": sum(announced.counts.values()),
    }


if __name__ == "__main__":
    sys.exit(main())

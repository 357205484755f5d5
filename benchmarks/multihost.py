"""Multi-host run on one machine: a web host and two worker hosts as network namespaces.

``python -m benchmarks.multihost [--tasks 2000] [--clients 8] [--chunk 25] [--cut-seconds 12]``

Needs root and ``ip netns``. The hosts and processes are those of
:mod:`tests.multihost` (gunicorn on the web host, a ``tests.apps.faulty``
worker on each worker host, one Redis on this side's veth ends). Requests
enter through the web host's veth from here, ``--clients`` at a time.

Two runs of ``--tasks`` tasks. The first runs with every link up. In the
second, worker host ``a``'s link is cut while it holds a batch in ``predict``
and stays down ``--cut-seconds`` (longer than the visibility timeout), then
comes back. Reported: throughput per host in each run, tasks lost (no
result, or a wrong one: must be 0), samples run twice (expected: the cut
host's claims run again elsewhere, at-least-once), results stored twice (must
be 0), how long after the cut the cut host's batch was stored by the other
host (recovery), and how long after the link came back the cut host ran a
batch again (rejoin). Exit status 1 when anything was lost or stored twice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from tests.fault_tools import Announcements
from tests.multihost import CUT, SURVIVOR, MultiHost, new_workdir
from tests.netns import netns_unavailable
from tests.servers import wait_until

# Samples of the second run start here, so the two runs' samples never meet.
SECOND_RUN_OFFSET = 1_000_000
# Samples sent to see the cut host serve again start here.
REJOIN_OFFSET = 2_000_000


class Stored(Announcements):
    """Result announcements: how often each task's, and when each sample's result was first stored."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.first: dict[int, float] = {}

    def heard(self, task_id: str, payload: bytes) -> None:
        super().heard(task_id, payload)
        meta = json.loads(payload)
        if meta.get("status") == "SUCCESS":
            self.first.setdefault(meta["result"] // 2, time.monotonic())


def load(hosts: MultiHost, samples: list[int], clients: int, chunk: int) -> tuple[float, list[dict[str, Any]]]:
    """Send ``samples`` through the web host in chunks, ``clients`` requests at a time; (seconds, answers)."""
    chunks = [samples[i : i + chunk] for i in range(0, len(samples), chunk)]
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(hosts.post, chunks))
    return time.monotonic() - started, answers


def lost(answers: list[dict[str, Any]], samples: list[int]) -> int:
    returned = Counter(value // 2 for answer in answers for value in answer["results"] if value % 2 == 0)
    return sum(1 for sample in samples if returned[sample] != 1)


def per_host_line(hosts: MultiHost, samples: list[int], seconds: float) -> str:
    runs = hosts.runs_by_host(set(samples))
    parts = [f"host {name} {len(counts)} ({len(counts) / seconds:.0f}/s)" for name, counts in sorted(runs.items())]
    return f"{len(samples)} tasks in {seconds:.2f} s = {len(samples) / seconds:.0f} tasks/s; " + ", ".join(parts)


def cut_run(hosts: MultiHost, samples: list[int], args: argparse.Namespace, stored: Stored) -> dict[str, Any]:
    """The second run: cut host a's link while it holds a batch, restore it after ``cut_seconds``."""
    (hosts.gate.directory / "open").unlink()
    runner = ThreadPoolExecutor(1)
    running = runner.submit(load, hosts, samples, args.clients, args.chunk)
    held = wait_until(lambda: set(hosts.runs_by_host(set(samples))[CUT]), 60, "host a to claim a batch", 0.01)
    hosts.hosts[CUT].cut()
    cut_at = time.monotonic()
    hosts.gate.open()
    wait_until(lambda: time.monotonic() - cut_at >= args.cut_seconds, args.cut_seconds + 5, "the cut", 0.1)
    hosts.hosts[CUT].restore()
    restored_at = time.monotonic()
    rejoined = rejoin(hosts, restored_at)
    seconds, answers = running.result()
    runner.shutdown()
    wait_until(lambda: all(sample in stored.first for sample in held), 60, "host a's batch to be stored elsewhere")
    recovered = max(stored.first[sample] for sample in held)
    return {
        "seconds": seconds,
        "answers": answers,
        "held": len(held),
        "recover": recovered - cut_at,
        "cut": restored_at - cut_at,
        "rejoin": rejoined,
    }


def rejoin(hosts: MultiHost, restored_at: float) -> float:
    """Seconds from the link's return to host a's first batch of fresh samples.

    Returns once those samples' requests are answered: host a's writer stores
    in order, so its late batch from before the cut has been written by then.
    """
    fresh: list[int] = []
    requests: list[threading.Thread] = []

    def serves() -> bool:
        if hosts.runs_by_host(set(fresh))[CUT]:
            return True
        chunk = list(range(REJOIN_OFFSET + len(fresh), REJOIN_OFFSET + len(fresh) + 16))
        fresh.extend(chunk)
        requests.append(threading.Thread(target=hosts.post, args=(chunk,), daemon=True))
        requests[-1].start()
        return False

    wait_until(serves, 120, "host a to serve again", 0.05)
    rejoined = time.monotonic() - restored_at
    for request in requests:
        request.join(120)
    return rejoined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent requests to the web host")
    parser.add_argument("--chunk", type=int, default=25, help="samples per request")
    parser.add_argument("--visibility-timeout", type=float, default=5.0)
    parser.add_argument("--batch-seconds", type=float, default=0.02, help="the model's time per batch")
    parser.add_argument("--cut-seconds", type=float, default=12.0, help="how long host a's link stays down")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    reason = netns_unavailable()
    if reason is not None:
        print(f"multihost: cannot run here: {reason}", file=sys.stderr)
        return 2
    hosts = MultiHost(new_workdir(), args.visibility_timeout, args.batch_seconds).start()
    try:
        with Stored(hosts.results_db()) as stored:
            first = list(range(args.tasks))
            seconds, answers = load(hosts, first, args.clients, args.chunk)
            second = list(range(SECOND_RUN_OFFSET, SECOND_RUN_OFFSET + args.tasks))
            run = cut_run(hosts, second, args, stored)
        lines = [
            f"run 1, all links up: {per_host_line(hosts, first, seconds)}",
            f"run 2, host {CUT} cut {run['cut']:.1f} s: {per_host_line(hosts, second, run['seconds'])}",
        ]
        twice = sum(1 for count in hosts.records.runs("work").values() if count > 1)
    finally:
        hosts.stop()
        if not args.keep_logs:
            shutil.rmtree(hosts.workdir, ignore_errors=True)
    lost_count = lost(answers, first) + lost(run["answers"], second)
    stored_twice = sum(1 for count in stored.counts.values() if count > 1)
    print(f"multihost: web host + worker hosts {CUT}, {SURVIVOR}; visibility_timeout={args.visibility_timeout}s")
    print("\n".join(lines))
    held = f"host {CUT}'s held batch ({run['held']} tasks)"
    print(f"recover: {held} stored by {SURVIVOR} {run['recover']:.1f} s after the cut")
    print(f"rejoin: host {CUT} ran a batch {run['rejoin']:.2f} s after its link came back")
    print(f"lost {lost_count}, run twice {twice}, stored twice {stored_twice}")
    return 1 if lost_count or stored_twice else 0


if __name__ == "__main__":
    sys.exit(main())

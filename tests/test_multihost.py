"""Three hosts on one machine (network namespaces): a web host, two worker hosts, one Redis.

Load sent to the web host is shared by both worker hosts. Then one worker
host's link is cut while it holds a batch in ``predict``, for longer than the
visibility timeout: its claims run on the other host, every task gets exactly
one stored result, and once the link is back the cut host serves again.

Needs root and ``ip netns`` (CI has both: there a missing one fails the test).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fault_tools import RESULT_PREFIX, Announcements
from tests.multihost import CUT, SURVIVOR, MultiHost, new_workdir
from tests.netns import netns_unavailable
from tests.servers import wait_until

pytestmark = pytest.mark.slow

# Seconds a claimed message stays invisible to other workers; short, so the test does not wait long.
VISIBILITY_TIMEOUT = 5.0


@pytest.fixture
def multihost() -> Iterator[MultiHost]:
    reason = netns_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the multi-host test must run in CI: {reason}")
        pytest.skip(f"no network namespaces here: {reason}")
    hosts = MultiHost(new_workdir(), visibility_timeout=VISIBILITY_TIMEOUT).start()
    yield hosts
    hosts.stop()


class Requests:
    """``POST /work`` requests running in threads, their answers kept."""

    def __init__(self, hosts: MultiHost) -> None:
        self.hosts = hosts
        self.answers: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def send(self, samples: list[int]) -> None:
        thread = threading.Thread(target=lambda: self.answers.append(self.hosts.post(samples)), daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))
        assert len(self.answers) == len(self.threads), "a request to the web host did not answer"
        return self.answers


def check_answers(answers: list[dict[str, Any]], samples: list[int]) -> list[str]:
    """Every sample came back doubled; returns the task ids."""
    assert sorted(value for answer in answers for value in answer["results"]) == sorted(2 * s for s in samples)
    return [task_id for answer in answers for task_id in answer["task_ids"]]


def test_two_worker_hosts_share_the_load_and_a_cut_host_loses_nothing_and_rejoins(multihost: MultiHost) -> None:
    task_ids: list[str] = []
    with Announcements(multihost.results_db()) as announced:
        # Given load sent to the web host, both worker hosts run batches of it.
        first = list(range(0, 160))
        load = Requests(multihost)
        for start in range(0, len(first), 20):
            load.send(first[start : start + 20])
        task_ids += check_answers(load.join(60), first)
        shared = multihost.runs_by_host(set(first))
        assert shared[CUT] and shared[SURVIVOR], f"one host ran every batch: {shared}"

        # When host a holds a batch in predict() and its link is cut for longer than the visibility timeout,
        (multihost.gate.directory / "open").unlink()
        during = Requests(multihost)
        sent: list[int] = []

        def cut_host_holds_a_batch() -> set[int]:
            held = set(multihost.runs_by_host(set(sent))[CUT])
            if not held:
                chunk = list(range(1000 + len(sent), 1000 + len(sent) + 16))
                sent.extend(chunk)
                during.send(chunk)
            return held

        held = wait_until(cut_host_holds_a_batch, 30, "host a to claim a batch", interval=0.3)
        multihost.hosts[CUT].cut()
        cut_at = time.monotonic()
        multihost.gate.open()  # a's predict() finishes while its link is down

        # Then the web host gets every result, the held ones run by host b,
        task_ids += check_answers(during.join(60), sent)
        assert set(held) <= set(multihost.runs_by_host(set(held))[SURVIVOR]), "host b did not run a's claims"
        wait_until(lambda: time.monotonic() - cut_at > 2 * VISIBILITY_TIMEOUT, 30, "the cut to outlast the timeout")
        multihost.hosts[CUT].restore()

        # and host a, back on the network, serves again.
        after = Requests(multihost)
        fresh: list[int] = []

        def cut_host_serves_again() -> bool:
            if multihost.runs_by_host(set(fresh))[CUT]:
                return True
            chunk = list(range(5000 + len(fresh), 5000 + len(fresh) + 16))
            fresh.extend(chunk)
            after.send(chunk)
            return False

        wait_until(cut_host_serves_again, 60, "host a to run a batch after its link came back", interval=0.5)
        task_ids += check_answers(after.join(60), fresh)

        # Nothing is left claimed (a's late results were acknowledged), and each task was stored once.
        broker = multihost.broker_db()
        wait_until(lambda: broker.hlen("unacked") == 0, 60, "host a to acknowledge its late batch")
        wait_until(lambda: sum(announced.counts.values()) >= len(task_ids), 10, "every announcement")
    assert len(set(task_ids)) == len(task_ids)
    assert {task_id: announced.counts[task_id] for task_id in task_ids} == dict.fromkeys(task_ids, 1)
    assert sum(announced.counts.values()) == len(task_ids), "a result was announced twice"
    results = multihost.results_db()
    assert sorted(k.decode() for k in results.keys(RESULT_PREFIX + "*")) == sorted(RESULT_PREFIX + t for t in task_ids)

"""Redis Sentinel for real: broker and results on ``sentinel://`` URLs, a master killed under load.

A private set on loopback (tests.servers.SentinelSet): one master, one
replica, three sentinels that call a master down after one silent second.
Workers and clients must follow the failover by themselves: every Redis
connection of celery-batching (claims, watchers, result writes, the fast
push, the reply channel) comes from a Sentinel-managed pool that asks the
sentinels where the master is whenever it reconnects.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from celery import Celery

from celery_batching import ConfigurationError, NotReplicated
from celery_batching.client.replication import ReplicaWait, replica_wait
from celery_batching.client.replies import BatchedResult
from tests.failover_tools import LoadedClients
from tests.fault_tools import RESULT_PREFIX, Broker, load_app
from tests.servers import SentinelSet, Worker, role, wait_until

APP = "tests.apps.faulty"
QUEUE = "faulty.soak"
# Seconds before a worker takes back claims a dead worker (or a lost write) left behind.
VISIBILITY_TIMEOUT = "5"


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    servers = SentinelSet().start()
    yield servers
    servers.stop()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def sentinel_worker(servers: SentinelSet, workers: list[Worker], **env: str) -> Worker:
    worker = Worker(
        APP,
        servers.url(0),
        "-Q",
        f"{QUEUE},celery",
        env={"CB_TEST_BACKEND": servers.url(1), "CB_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT, **env},
    )
    workers.append(worker)
    return worker.start()


def blocked_watchers(client) -> int:
    """How many connections wait in a watcher's blocking move on this server."""
    return sum(1 for entry in client.client_list() if entry.get("cmd") == "blmove")


@pytest.mark.slow
def test_killing_the_master_under_load_loses_no_task(sentinel_set, workers, monkeypatch):
    # Given a worker and a client app on sentinel:// URLs that wait for one replica on each push and batch
    monkeypatch.setenv("CB_WAIT_REPLICAS", "1")
    sentinel_worker(sentinel_set, workers, CB_WAIT_REPLICAS="1", CB_BATCH_SECONDS="0.005")
    faulty = load_app(APP, sentinel_set.url(0), sentinel_set.url(1))
    # Then a task takes the fast path (one push, the reply channel) and its result is on the master
    first = faulty.soak.delay(21)
    assert isinstance(first, BatchedResult)
    assert first.get(timeout=10) == 42
    assert sentinel_set.master.client(1).exists(RESULT_PREFIX + first.id)
    wait_until(lambda: blocked_watchers(sentinel_set.master.client()) > 0, 10, "the watchers to block on the master")

    # When 8 clients keep sending and waiting, and the master is killed in the middle
    with LoadedClients(faulty.soak, threads=8) as clients:
        wait_until(lambda: clients.done() >= 300, 60, "300 tasks before the kill")
        sentinel_set.kill_master()
        sentinel_set.wait_for_failover()
        # (until a replica is back, the new master confirms no write: sends are refused, batches kept)
        sentinel_set.rejoin_as_replica()
        at_failover = clients.done()
        # Then the clients and the worker go on, on the new master
        wait_until(lambda: clients.done() >= at_failover + 300, 90, "300 tasks after the failover")
    tally = clients.tally

    # And no task whose send returned was lost, and every result is stored on the new master
    assert tally.lost == []
    # (the master as the sentinels name it now: on a loaded machine they may have failed over once more)
    stored = sentinel_set.master_client(1).exists(*[RESULT_PREFIX + task_id for task_id in tally.done_ids])
    assert stored == len(tally.done_ids) == tally.sent
    # And the worker's watchers moved to the new master, and nothing is left queued or claimed
    master = sentinel_set.master_client(0)
    wait_until(lambda: blocked_watchers(master) > 0, 30, "the watchers to block on the new master")
    broker = Broker(master, QUEUE)
    wait_until(lambda: broker.snapshot() == (0, 0), 30, "nothing left queued or claimed")
    print(f"failover under load: {tally.sent} sent, {tally.done} done, {len(tally.send_errors)} sends refused")
    print("refusals:", sorted({error.split(":")[0] for error in tally.send_errors}))


@pytest.mark.slow
def test_a_manual_failover_moves_workers_and_clients_to_the_promoted_replica(sentinel_set, workers, monkeypatch):
    # Given a worker and a client on sentinel:// URLs that wait for one replica on each push and batch
    monkeypatch.setenv("CB_WAIT_REPLICAS", "1")
    worker = sentinel_worker(sentinel_set, workers, CB_WAIT_REPLICAS="1")
    faulty = load_app(APP, sentinel_set.url(0), sentinel_set.url(1))
    assert faulty.soak.delay(1).get(timeout=10) == 2

    # When the sentinels hand the master role to the replica while the old master lives on
    with LoadedClients(faulty.soak, threads=4) as clients:
        wait_until(lambda: clients.done() >= 100, 60, "100 tasks before the switch")
        sentinel_set.sentinel_client().sentinel_failover(sentinel_set.name)
        sentinel_set.wait_for_failover()
        # Until the sentinels demote it (their next look, within 10 s) the old master still takes
        # writes that its resync will drop; no replica confirms them, so those calls are refused.
        wait_until(lambda: role(sentinel_set.master.client()) == "slave", 30, "the old master to be demoted")
        at_switch = clients.done()
        wait_until(lambda: clients.done() >= at_switch + 100, 60, "100 tasks after the switch")

    # Then nothing whose send returned was lost, and the worker watches on the new master
    assert clients.tally.lost == []
    wait_until(lambda: blocked_watchers(sentinel_set.replica.client()) > 0, 10, "the watchers on the new master")
    assert blocked_watchers(sentinel_set.master.client()) == 0
    print(f"manual failover: {clients.tally.sent} sent, {len(clients.tally.send_errors)} sends refused")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


# -- batching_wait_replicas ---------------------------------------------------


def test_a_push_no_replica_confirms_raises_not_replicated(redis_url):
    # Given an app that waits for a replica, on a Redis that has none
    faulty = load_app(APP, redis_url)
    faulty.app.conf.update(batching_wait_replicas=1, batching_wait_timeout=0.05)
    # When a task is sent, Then the caller hears that the push is on the master only
    with pytest.raises(NotReplicated, match=r"0 of batching_wait_replicas=1 replica\(s\) confirmed"):
        faulty.soak.delay(1)


def test_a_batch_no_replica_confirms_stays_unacknowledged(redis_url, redis_server, workers):
    # Given a worker that waits for a replica, on a Redis that has none
    worker = Worker(APP, redis_url, "-Q", f"{QUEUE},celery", env={"CB_WAIT_REPLICAS": "1"})
    workers.append(worker.start())
    faulty = load_app(APP, redis_url)
    # When a task runs, Then its result is written but its message is not acknowledged
    result = faulty.soak.delay(4)
    assert result.get(timeout=10) == 8
    broker = Broker(redis_server.client(0), QUEUE)
    wait_until(lambda: "NotReplicated" in worker.log(), 10, "the worker to report the missing replica")
    assert broker.snapshot() == (0, 1), "kept for a redelivery: the stored result is not durable"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, None),
        ({"batching_wait_replicas": 0}, None),
        ({"batching_wait_replicas": 1}, ReplicaWait(1, 1000)),
        ({"batching_wait_replicas": 2, "batching_wait_timeout": 0.25}, ReplicaWait(2, 250)),
    ],
)
def test_replica_wait_settings(settings, expected):
    app = Celery("replication", set_as_current=False)
    app.conf.update(settings)
    assert replica_wait(app) == expected


@pytest.mark.parametrize(
    "settings",
    [
        {"batching_wait_replicas": -1},
        {"batching_wait_replicas": "1"},
        {"batching_wait_replicas": True},
        {"batching_wait_replicas": 1, "batching_wait_timeout": 0},
        {"batching_wait_replicas": 1, "batching_wait_timeout": "1s"},
    ],
)
def test_bad_replica_wait_settings_are_refused(settings):
    app = Celery("replication", set_as_current=False)
    app.conf.update(settings)
    with pytest.raises(ConfigurationError, match="batching_wait_"):
        replica_wait(app)

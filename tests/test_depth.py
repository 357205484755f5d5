"""The true depth of a batched queue, read from a real Redis.

A queue with a global key prefix holds messages of three priorities, some
claimed and not acknowledged, some parked until their ETA; the depth reader
(the worker's and the exporter's) must count each message once in its state,
also after kombu's visibility-timeout restore, with the same few Redis
commands whatever the depth. Then a real worker's metrics port and the
``celery-batching exporter`` command export it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from celery_batching import submit_many
from celery_batching.deploy.cli import build_parser
from celery_batching.worker.claim import RedisQueue
from celery_batching.worker.depth import DepthReader, sent_at, visibility_timeout
from tests.fault_tools import index_entries, load_app
from tests.scrape import scrape
from tests.servers import ROOT, free_port, stop_process, wait_until

APP = "tests.apps.timed"
QUEUE = "timed.stamp"
PREFIX = "tenant:"
VISIBILITY_TIMEOUT = 60


@pytest.fixture
def prefixed(redis_url, monkeypatch):
    """The timed app with kombu's global key prefix and a one-minute visibility timeout."""
    monkeypatch.setenv("CB_KEYPREFIX", PREFIX)
    monkeypatch.setenv("CB_VISIBILITY_TIMEOUT", str(VISIBILITY_TIMEOUT))
    return load_app(APP, redis_url)


@pytest.fixture
def queue(prefixed, redis_server):
    """The queue as a worker claims from it."""
    return RedisQueue(redis_server.client(0), QUEUE, prefixed.app.conf.broker_transport_options)


@pytest.fixture
def reader(prefixed, queue):
    return DepthReader(queue, visibility_timeout(prefixed.app))


def commands_run(client) -> int:
    """Every command Redis has run so far, those run inside scripts included."""
    return sum(stats["calls"] for name, stats in client.info("commandstats").items() if name.startswith("cmdstat_"))


def test_every_message_is_counted_once_in_its_state(prefixed, queue, reader):
    # Given two messages parked until their ETA, the way a worker parks them
    for sample in (1, 2):
        prefixed.stamp.apply_async((sample,), countdown=600)
    parked = queue.claim(2).messages
    queue.schedule([(message, time.time() + 600) for message in parked])
    # And three claimed, not yet acknowledged (a batch running)
    for sample in (3, 4, 5):
        prefixed.stamp.delay(sample)
    running = queue.claim(3).messages
    # And six waiting: four plain (each with its send time) and two of priority 9
    before = time.time()
    for sample in range(6, 10):
        prefixed.stamp.delay(sample)
    after = time.time()
    for sample in (10, 11):
        prefixed.stamp.apply_async((sample,), priority=9)

    # When the depth is read
    depth = reader.read()
    # Then every priority list under the prefix, the claims and the parked messages are counted
    assert (depth.waiting, depth.claimed, depth.scheduled) == (6, 3, 2)
    # And the oldest waiting message's age comes from its send time
    assert before <= depth.oldest_sent_at <= after
    assert depth.oldest_waiting_seconds(after + 5) == pytest.approx(after + 5 - depth.oldest_sent_at)

    # When one claimed message is acknowledged and one given back (a warm shutdown)
    queue.ack([running[0].tag])
    queue.give_back([running[1]])
    # Then it is counted where it now is
    depth = reader.read()
    assert (depth.waiting, depth.claimed, depth.scheduled) == (7, 1, 2)


def test_a_claim_restored_by_kombu_counts_once(prefixed, queue, reader):
    # Given a message claimed longer ago than the visibility timeout (its worker died)
    prefixed.stamp.delay(1)
    prefixed.stamp.delay(2)
    queue.claim(1, now=time.time() - VISIBILITY_TIMEOUT - 10)
    assert (reader.read().waiting, reader.read().claimed) == (1, 1)
    # When kombu's visibility-timeout restore brings it back (as every worker runs it)
    with prefixed.app.connection_for_read() as connection:
        connection.default_channel.qos.restore_visible(num=None)
    # Then it counts as waiting, no longer as claimed
    depth = reader.read()
    assert (depth.waiting, depth.claimed, depth.scheduled) == (2, 0, 0)


def test_the_prune_after_kombus_restore_leaves_no_stale_claim(prefixed, queue, redis_server):
    # Given a claim older than the visibility timeout, restored by kombu (its worker died)
    prefixed.stamp.delay(1)
    queue.claim(1, now=time.time() - VISIBILITY_TIMEOUT - 10)
    prefixed.stamp.delay(2)
    queue.claim(1)  # and a fresh one, still running
    with prefixed.app.connection_for_read() as connection:
        connection.default_channel.qos.restore_visible(num=None)
    # When the worker prunes after its restore, as its fetcher does
    dropped = queue.prune_claimed(VISIBILITY_TIMEOUT)
    # Then only the restored claim leaves the queue's claimed index
    assert dropped == 1
    assert len(index_entries(redis_server.client(0), queue.claimed_index_key)) == 1


def test_reading_costs_the_same_few_commands_whatever_the_depth(prefixed, queue, reader, redis_server):
    client = redis_server.client(0)

    def cost() -> int:
        start = commands_run(client)
        reader.read()
        return commands_run(client) - start - 1  # less the INFO that measured it

    # Given a short queue, with a claim and a parked message
    prefixed.stamp.delay(0)
    prefixed.stamp.delay(1)
    queue.schedule([(queue.claim(1).messages[0], time.time() + 600)])
    prefixed.stamp.delay(2)
    queue.claim(1)
    small = cost()
    # When it grows a thousandfold in every state
    submit_many(prefixed.stamp, list(range(2000)))
    queue.schedule([(m, time.time() + 600) for m in queue.claim(1000).messages])
    queue.claim(500)
    # Then a read runs as many commands as before, and few
    assert (reader.read().waiting, reader.read().claimed, reader.read().scheduled) == (501, 501, 1001)
    assert cost() == small
    assert small <= 20


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"headers": {"batching_sent_at": 12.5}}', 12.5),
        (b'{"headers": {"batching_sent_at": 12}}', 12.0),
        (b'{"headers": {"id": "x"}}', None),  # sent by Celery's own path
        (b'{"headers": {"batching_sent_at": true}}', None),
        (b'{"headers": {"batching_sent_at": "12"}}', None),
        (b'{"headers": []}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"\xff\xfe", None),
    ],
)
def test_the_send_time_of_any_message_or_none(payload, expected):
    assert sent_at(payload) == expected


# -- exported ------------------------------------------------------------------------------


def depth_samples(port: int) -> dict[tuple[str, ...], float]:
    """The depth series of a metrics page: (queue, state) -> value, and (queue, "oldest") -> age."""
    found = {}
    for (name, pairs), sample in scrape(port).items():
        labels = dict(pairs)
        if name == "celery_batching_queue_depth":
            found[(labels["queue"], labels["state"])] = sample
        elif name == "celery_batching_oldest_waiting_seconds":
            found[(labels["queue"], "oldest")] = sample
    return found


def test_a_worker_exports_the_depth_of_its_queues(prefixed, start_worker, redis_url):
    # Given a worker of the prefixed app, serving on a metrics port
    port = free_port()
    start_worker(
        APP,
        env={
            "CB_KEYPREFIX": PREFIX,
            "CELERY_BATCHING_METRICS_PORT": str(port),
            "CELERY_BATCHING_METRICS_ADDR": "127.0.0.1",
        },
    )
    # When two tasks are sent for later
    for sample in (1, 2):
        prefixed.stamp.apply_async((sample,), countdown=600)
    # Then its metrics port shows them scheduled, nothing waiting or claimed
    expected = {(QUEUE, "waiting"): 0, (QUEUE, "claimed"): 0, (QUEUE, "scheduled"): 2, (QUEUE, "oldest"): 0}
    wait_until(
        lambda: {k: v for k, v in depth_samples(port).items() if k[0] == QUEUE} == expected, 30, "the depth scraped"
    )


def test_the_exporter_command_exports_the_depth_with_no_worker_running(prefixed, redis_url, queue):
    # Given messages waiting and claimed, and no worker
    for sample in range(5):
        prefixed.stamp.delay(sample)
    queue.claim(2)
    # When the exporter runs for the app
    port = free_port()
    env = {"CB_TEST_BROKER": redis_url, "CB_KEYPREFIX": PREFIX, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "celery_batching", "exporter", "-A", APP, "--port", str(port)]
    process = subprocess.Popen([*command, "--addr", "127.0.0.1"], env={**os.environ, **env}, cwd=ROOT)
    try:
        # Then it serves the queue's depth, and says it is ready
        found = wait_until(lambda: _scrape_or_none(port), 30, "the exporter to serve")
        assert found[(QUEUE, "waiting")] == 3 and found[(QUEUE, "claimed")] == 2
        assert found[(QUEUE, "scheduled")] == 0 and found[(QUEUE, "oldest")] >= 0
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5).status == 200
    finally:
        stop_process(process)


def _scrape_or_none(port: int) -> dict[tuple[str, ...], float] | None:
    try:
        return depth_samples(port) or None
    except OSError:
        return None


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_the_exporter_refuses_a_port_that_is_not_one(port, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["exporter", "-A", APP, "--port", port])
    assert f"expected a port number 1-65535, got '{port}'" in capsys.readouterr().err

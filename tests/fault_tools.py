"""Instruments for fault tests: see inside Redis and the model while things break.

They observe the system from outside (Redis keys, the model's record files,
pub/sub), so what a test asserts does not depend on the code under test
telling the truth about itself.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import threading
import uuid
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import redis

from celery_batching.worker.claim import SKIPLIST_MEMBER

# Result keys of Celery's Redis backend; also the pub/sub channels results are announced on.
RESULT_PREFIX = "celery-task-meta-"


def load_app(module: str, broker: str, backend: str | None = None) -> ModuleType:
    """A fresh copy of a test app module bound to ``broker`` (not the session's Redis).

    The copy is not put in ``sys.modules``; its tasks must have explicit names
    so they match the ones a worker running the real module serves.
    """
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.loader is not None
    saved = {key: os.environ.get(key) for key in ("CB_TEST_BROKER", "CB_TEST_BACKEND")}
    os.environ["CB_TEST_BROKER"] = broker
    os.environ["CB_TEST_BACKEND"] = backend or ""
    try:
        copy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copy)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return copy


class Gate:
    """The test's side of ``tests.apps.faulty.pass_gate``: lets held batches through."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def release(self, batches: int = 1) -> None:
        for _ in range(batches):
            (self.directory / f"token-{uuid.uuid4().hex}").touch()

    def open(self) -> None:
        (self.directory / "open").touch()


class Records:
    """What the faulty app's models saw: one entry per predict call, in order."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "batches.jsonl"
        directory.mkdir(parents=True, exist_ok=True)

    def calls(self, task: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.endswith("}")]
        return [entry for entry in entries if task is None or entry["task"] == task]

    def runs(self, task: str) -> Counter:
        """How many predict calls each sample took part in."""
        return Counter(sample for entry in self.calls(task) for sample in entry["batch"])


def index_entries(client: redis.Redis, key: str) -> dict[str, float]:
    """Delivery tag -> claim time in a claim index (kombu's or a queue's own), less its skiplist member."""
    entries = client.zrange(key, 0, -1, withscores=True)
    return {tag.decode(): score for tag, score in entries if tag.decode() != SKIPLIST_MEMBER}


class Broker:
    """Reads kombu's bookkeeping for one queue straight from Redis (under kombu's ``global_keyprefix``)."""

    def __init__(self, client: redis.Redis, queue: str, prefix: str = "") -> None:
        self.client = client
        self.queue = prefix + queue
        self.unacked_key = prefix + "unacked"
        self.unacked_index_key = prefix + "unacked_index"
        # The queue's own index of claims (celery_batching.worker.claim), beside kombu's shared one.
        self.claimed_index_key = self.queue + "\x06\x16claimed"
        self.prefix = prefix

    def misplaced_keys(self) -> list[bytes]:
        """Keys of kombu's bookkeeping outside the prefix, or under it twice (a prefixing bug's traces)."""
        if not self.prefix:
            return []
        unprefixed = {name.encode() for name in ("unacked", "unacked_index", self.queue[len(self.prefix) :])}
        return [
            key
            for key in self.client.keys("*")
            if key.startswith((self.prefix * 2).encode()) or key.split(b"\x06")[0] in unprefixed
        ]

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(self.queue, 0, -1)]

    def unacked(self) -> dict[str, Any]:
        """Delivery tag -> the message recorded as claimed and not yet acknowledged."""
        return {tag.decode(): json.loads(raw)[0] for tag, raw in self.client.hgetall(self.unacked_key).items()}

    def unacked_index(self) -> dict[str, float]:
        return index_entries(self.client, self.unacked_index_key)

    def claimed_index(self) -> dict[str, float]:
        return index_entries(self.client, self.claimed_index_key)

    def queued_samples(self) -> list[Any]:
        return [sample_of(message) for message in self.queued()]

    def unacked_samples(self) -> list[Any]:
        return [sample_of(message) for message in self.unacked().values()]

    def snapshot(self) -> tuple[int, int]:
        """(queue length, unacked count) read atomically."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(self.queue)
            pipe.hlen(self.unacked_key)
            queued, unacked = pipe.execute()
        return queued, unacked


def sample_of(message: dict[str, Any]) -> Any:
    """The one positional argument of a JSON Celery protocol 2 message."""
    body = json.loads(base64.b64decode(message["body"]))
    return body[0][0]


def count_results(client: redis.Redis) -> int:
    """How many task results are stored (the backend database holds nothing else)."""
    return int(client.dbsize())


W = TypeVar("W", bound="Watcher")


class Watcher:
    """A thread that looks at something over and over while a ``with`` block runs."""

    #: Pause between two looks (seconds).
    interval = 0.005

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self: W) -> W:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.close()

    def look(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the watcher holds, once its thread has stopped."""

    def _run(self) -> None:
        while not self._stop.is_set():
            self.look()
            self._stop.wait(self.interval)


class Conservation(Watcher):
    """Asserts, all along a test, that no message is ever outside Redis's bookkeeping.

    Every sent message must at every instant be queued, recorded as
    unacknowledged, or have its result stored (results are stored before the
    acknowledgement, and counted after the atomic queue/unacked snapshot, so
    a message acknowledged in between is still counted). A claim that popped
    a message and recorded it in a second step would show up here as a dip.
    """

    def __init__(self, broker: Broker, results: redis.Redis, total: int) -> None:
        super().__init__()
        self.broker = broker
        self.results = results
        self.total = total
        self.snapshots = 0
        self.dips: list[tuple[int, int, int]] = []

    def look(self) -> None:
        queued, unacked = self.broker.snapshot()
        stored = count_results(self.results)
        self.snapshots += 1
        if queued + unacked + stored < self.total:
            self.dips.append((queued, unacked, stored))


class PeakClaims(Watcher):
    """The most messages ever claimed and not yet acknowledged, sampled all along."""

    interval = 0.002

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker
        self.peak = 0

    def look(self) -> None:
        self.peak = max(self.peak, self.broker.snapshot()[1])


class Listener(Watcher):
    """Hears what Redis publishes on the channels matching ``pattern``."""

    interval = 0.0  # get_message waits by itself

    def __init__(self, client: redis.Redis, pattern: str) -> None:
        super().__init__()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(pattern)
        self._pubsub.get_message(timeout=1)  # the subscription is in place before anything is sent

    def look(self) -> None:
        try:
            message = self._pubsub.get_message(timeout=0.1)
        except redis.ConnectionError:  # Redis restarting, or failing over: resubscribes on reconnect
            self._stop.wait(0.1)
            return
        if message is not None and message["type"] == "pmessage":
            self.message(message["channel"].decode(), message["data"])

    def message(self, channel: str, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._pubsub.close()


class Announcements(Listener):
    """Counts result announcements (Celery's pub/sub) per task id."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client, RESULT_PREFIX + "*")
        self.counts: Counter = Counter()

    def message(self, channel: str, data: bytes) -> None:
        self.heard(channel[len(RESULT_PREFIX) :], data)

    def heard(self, task_id: str, payload: bytes) -> None:
        """One announcement of ``task_id``'s result (a subclass may look at the payload too)."""
        self.counts[task_id] += 1


class TaskEventLog(Listener):
    """Counts Celery task events (``task-succeeded``, ...) per task id, read off the broker's pub/sub.

    Celery's event exchange is a kombu fanout, which the Redis transport
    publishes on channels named after the exchange; the log subscribes to
    them all, as a monitor (Flower) would, and decodes each message's body.
    """

    def __init__(self, broker: redis.Redis) -> None:
        super().__init__(broker, "*celeryev*")
        self.counts: Counter = Counter()
        #: The ``result`` field of each task's ``task-succeeded`` event (a repr, as monitors show it).
        self.results: dict[str, str] = {}

    def count(self, event_type: str, task_id: str) -> int:
        return self.counts[event_type, task_id]

    def message(self, channel: str, data: bytes) -> None:
        event = json.loads(base64.b64decode(json.loads(data)["body"]))
        for one in event if isinstance(event, list) else [event]:  # Celery may group events
            if "uuid" in one:
                self.counts[one["type"], one["uuid"]] += 1
                if one["type"] == "task-succeeded":
                    self.results[one["uuid"]] = one.get("result")

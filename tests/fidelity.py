"""Helpers of the Celery fidelity tests: what the test apps recorded inside the worker."""

from __future__ import annotations

import json
from typing import Any

import redis


def seen(client: redis.Redis, what: str) -> list[dict[str, Any]]:
    """The records the worker left under ``seen:<what>``, oldest first."""
    return [json.loads(line) for line in client.lrange(f"seen:{what}", 0, -1)]


def story(client: redis.Redis, task_id: str) -> list[str]:
    """What happened around one task, in order: the record kinds that name its id."""
    return [record["what"] for record in seen(client, "all") if record.get("id") == task_id]


def batch_sizes(client: redis.Redis, task: str) -> list[int]:
    return [record["size"] for record in seen(client, "batch") if record["task"] == task]

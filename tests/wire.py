"""Decoding hand-made task messages, for the pure tests of the worker's decoder (no server)."""

from __future__ import annotations

import base64
import json

from celery_batching.protocol import Claimed, MessageDecoder, TaskMessage


def decode_message(task: str, queue: str, sample: object = 1, **headers: object) -> TaskMessage:
    """A protocol 2 message of ``task`` carrying ``sample`` and ``headers``, as the worker decodes it."""
    body = base64.b64encode(json.dumps([[sample], {}, {}]).encode()).decode()
    payload = json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"task": task, "id": "t1", **headers},
            "properties": {"body_encoding": "base64", "delivery_tag": "d1"},
        }
    ).encode()
    return MessageDecoder(task, queue, {"application/json"}, None).decode(Claimed("d1", payload))

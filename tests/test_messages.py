"""The fast path's envelope read back; its own headers decoded: bad values ignored, never trusted (no server)."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery
from kombu.utils.json import loads as kombu_loads

from celery_batching import MalformedMessage, batched
from celery_batching.protocol import CHANNEL_PREFIX, REPLY_HEADER, SENT_AT_HEADER, Claimed, MessageDecoder, envelope
from tests.wire import decode_message

TASK = "tests.double"


def decode(**headers: object):
    return decode_message(TASK, "double", 21, **headers)


def test_a_stamped_send_time_gives_the_queue_wait():
    message = decode(**{SENT_AT_HEADER: 1000.0})
    assert message.sent_at == 1000.0
    assert message.queue_wait == pytest.approx(message.claimed_at - 1000.0)


@pytest.mark.parametrize("value", ["yesterday", True, None, [1.0], {"t": 1}])
def test_a_send_time_that_is_not_a_number_is_ignored(value):
    message = decode(**{SENT_AT_HEADER: value})
    assert message.error is None and message.sample == 21
    assert message.sent_at is None and message.queue_wait is None


def test_a_reply_channel_is_kept():
    channel = CHANNEL_PREFIX + "abc"
    assert decode(**{REPLY_HEADER: channel}).reply_channel == channel


@pytest.mark.parametrize("value", ["celery-task-meta-x", "", 42, None, CHANNEL_PREFIX + "x" * 200])
def test_a_reply_header_naming_anything_else_is_ignored(value):
    message = decode(**{REPLY_HEADER: value})
    assert message.error is None and message.sample == 21
    assert message.reply_channel is None


def _echo(batch: list) -> list:
    return batch


@pytest.fixture(scope="module")
def unicode_task():
    app = Celery("envelope_test", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1", set_as_current=False)
    return batched(app, name="tâche.écho", queue="file-ü")(_echo)


@pytest.mark.parametrize("task_id", ["t-1", uuid.UUID(int=7)], ids=["str", "uuid"])
def test_the_fast_paths_envelope_reads_back_as_sent(unicode_task, task_id):
    # Given an envelope of text beyond ASCII, written by orjson (a text id) or by kombu (a UUID id)
    sample = {"text": "héllo ☃", "n": [1, 2.5, None]}
    channel = CHANNEL_PREFIX + "ü"
    payload = envelope(
        unicode_task, task_id, sample, "file-ü", expires=None, ignore_result=False, reply_channel=channel
    )
    assert isinstance(payload, bytes) == isinstance(task_id, str)

    # When kombu reads it, the id is what was sent (kombu's JSON keeps a UUID a UUID)
    outer = kombu_loads(payload)
    assert outer["headers"]["id"] == task_id and outer["properties"]["delivery_info"]["routing_key"] == "file-ü"

    # And the worker decodes the call as sent
    decoder = MessageDecoder(unicode_task.name, "file-ü", {"application/json"}, None, fast_json=True)
    message = decoder.decode(Claimed("d1", payload if isinstance(payload, bytes) else payload.encode()))
    assert message.error is None
    assert (message.task_id, message.sample, message.reply_channel) == (str(task_id), sample, channel)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"__type__": "datetime", "__value__": 5}',
        b'{"headers": {"__type__": "uuid", "__value__": "zz"}}',
        b'{"__type__": "bytes", "__value__": 5}',
        b"[1, 2]",
        b"{not json",
    ],
)
@pytest.mark.parametrize("fast_json", [False, True], ids=["kombu", "orjson"])
def test_an_envelope_kombu_cannot_read_fails_its_message_alone(payload, fast_json):
    # Given an envelope whose JSON, or one of kombu's typed values in it, does not decode
    decoder = MessageDecoder(TASK, "double", {"application/json"}, None, fast_json=fast_json)

    # When it is decoded, it becomes a failed message naming the problem, and nothing is raised
    message = decoder.decode(Claimed("d1", payload))
    assert isinstance(message.error, MalformedMessage)
    assert "not a kombu JSON envelope" in str(message.error) and payload[:10].decode() in str(message.error)

"""Decoding the fast path's own headers: bad values are ignored, never trusted (no server needed)."""

from __future__ import annotations

import pytest

from celery_batching.protocol import CHANNEL_PREFIX, REPLY_HEADER, SENT_AT_HEADER
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

"""The reply channel's reader against a real Redis: whole messages in order, timeouts, a lost connection."""

from __future__ import annotations

import pytest
import redis

from celery_batching.client.subscription import ChannelSubscription
from celery_batching.resp import READ_SIZE
from tests.servers import wait_until

CHANNEL = "celery-batching-reply-b-subscription-test"


@pytest.fixture
def client(redis_server):
    return redis_server.client(1)


@pytest.fixture
def subscription(client):
    subscription = ChannelSubscription(client, CHANNEL, 5)
    yield subscription
    subscription.close()


def test_messages_come_whole_and_in_order_however_the_socket_splits_them(client, subscription):
    # Given messages small and larger than one read of the socket, and one on another channel
    messages = [b"first", bytes(range(256)) * (3 * READ_SIZE // 256 + 1), b"", b"last"]
    client.publish("another-channel", b"not for it")
    for message in messages:
        client.publish(CHANNEL, message)
    # Then each comes back as it was sent
    assert [subscription.next_message(5) for _ in messages] == messages


def test_no_message_within_the_timeout_is_none_and_the_next_one_still_comes(client, subscription):
    assert subscription.next_message(0.05) is None
    client.publish(CHANNEL, b"after a quiet spell")
    assert subscription.next_message(5) == b"after a quiet spell"


def test_a_killed_connection_raises_connection_error(client, subscription):
    # Given a subscription Redis drops (a restart, a failover, CLIENT KILL)
    host, port = subscription._connection._sock.getsockname()[:2]
    assert client.client_kill(f"{host}:{port}")
    # Then the next read says so, rather than waiting for messages that cannot come
    with pytest.raises(redis.ConnectionError):
        wait_until(lambda: subscription.next_message(0.1) is not None, 5, "the lost connection to be noticed")

"""The claim script's bookkeeping, for every shape of message it may pop.

A claim records each message in kombu's unacked hash exactly as kombu's own
``QoS.append`` would (``[payload, exchange, routing_key]``), so kombu's restore
brings it back unchanged. The script reads the delivery tag and routing from
the tail of kombu's envelope (as kombu's JSON and as orjson lay it out); a
message laid out otherwise is decoded whole.
Both paths must leave the same record.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest
from celery import Celery

from celery_batching import batched
from celery_batching.worker.claim import SKIPLIST_MEMBER, RedisQueue
from tests.fault_tools import index_entries

QUEUE = "claimed.q"


@pytest.fixture(scope="module")
def app(redis_server):
    app = Celery("claim_test", broker=redis_server.url(0), backend=redis_server.url(1), set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    batched(app, name="claim.echo", queue=QUEUE)(echo)
    return app


def echo(batch: list) -> list:
    return batch


@pytest.fixture
def broker(redis_server, redis_url):
    return redis_server.client(0)


def envelope_with_properties_first(tag: str, routing_key: str) -> bytes:
    """A valid kombu envelope whose keys come in another order: no tail to read."""
    return json.dumps(
        {
            "properties": {
                "delivery_tag": tag,
                "delivery_info": {"exchange": "ex", "routing_key": routing_key},
                "body_encoding": "base64",
                "priority": 0,
            },
            "body": "",
            "headers": {},
        }
    ).encode()


def claim_all(broker, count: int) -> tuple[list, float]:
    queue = RedisQueue(broker, QUEUE)
    before = time.time()
    claim = queue.claim(count, before)
    return claim.messages, before


def test_messages_sent_by_celery_and_by_the_fast_path_are_recorded_as_kombu_records_them(app, broker):
    # Given one message through Celery's own producer and one through the fast path
    app.conf.batching_fast_client = False
    app.tasks["claim.echo"].delay(1)
    app.conf.batching_fast_client = True
    app.tasks["claim.echo"].delay(2)
    raw = broker.lrange(QUEUE, 0, -1)

    # When both are claimed
    messages, now = claim_all(broker, 10)

    # Then each is recorded under its own delivery tag, as [payload, exchange, routing key]
    assert len(messages) == 2
    for message in messages:
        envelope = json.loads(message.payload)
        assert message.tag == envelope["properties"]["delivery_tag"]
        record = broker.hget("unacked", message.tag)
        delivery = envelope["properties"]["delivery_info"]
        assert json.loads(record) == [envelope, delivery["exchange"], delivery["routing_key"]]
        assert record.startswith(b"[" + message.payload + b",")  # embedded verbatim
    assert sorted(m.payload for m in messages) == sorted(raw)
    # Scored by the claim time, as kombu scores its own claims
    for index in ("unacked_index", f"{QUEUE}\x06\x16claimed"):
        scores = index_entries(broker, index)
        assert set(scores) == {m.tag for m in messages}
        assert all(score == now for score in scores.values())


def test_the_claim_indexes_stay_skiplists_and_no_restore_takes_their_extra_member(app, broker):
    # Given a message claimed so long ago that kombu's visibility timeout has passed
    app.tasks["claim.echo"].delay(1)
    queue = RedisQueue(broker, QUEUE)
    [claimed] = queue.claim(10, time.time() - 10 * 3600).messages
    # Then both indexes are skiplists (a listpack inserts in linear time), each with its extra member at +inf
    for key in ("unacked_index", queue.claimed_index_key):
        assert broker.object("encoding", key) == b"skiplist"
        assert broker.zscore(key, SKIPLIST_MEMBER) == math.inf
    # When kombu restores what is overdue, and the queue prunes after it
    with app.connection_for_read() as connection:
        connection.default_channel.qos.restore_visible(num=None)
    queue.prune_claimed(3600)
    # Then the message is back on its queue and out of both indexes, while the extra member stays
    [restored] = broker.lrange(QUEUE, 0, -1)
    assert json.loads(restored)["headers"]["id"] == json.loads(claimed.payload)["headers"]["id"]
    for key in ("unacked_index", queue.claimed_index_key):
        assert index_entries(broker, key) == {}
        assert broker.zscore(key, SKIPLIST_MEMBER) == math.inf


@pytest.mark.parametrize("routing_key", ["plain", 'with "quotes"', "tab\there", "ünïcode"])
def test_a_message_without_kombus_tail_is_decoded_whole(app, broker, routing_key):
    # Given an envelope whose properties come first (some other producer's layout)
    payload = envelope_with_properties_first("tag-1", routing_key)
    broker.lpush(QUEUE, payload)

    # When it is claimed
    messages, _ = claim_all(broker, 10)

    # Then it is recorded just the same
    assert [m.tag for m in messages] == ["tag-1"]
    assert json.loads(broker.hget("unacked", "tag-1")) == [json.loads(payload), "ex", routing_key]


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")], ids=["kombu", "orjson"])
def test_the_tag_and_routing_are_read_from_the_tail_in_either_layout(app, broker, separators):
    # Given a payload that only the tail reading can make sense of: it does not parse as JSON
    tail = json.dumps(
        {
            "delivery_info": {"exchange": "ex", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "t-1",
        },
        separators=separators,
    )
    payload = b'not json, "properties"' + separators[1].encode() + tail.encode() + b"}"
    broker.lpush(QUEUE, payload)

    # When it is claimed, its tag and routing come from the tail (decoding it whole would fail)
    messages, _ = claim_all(broker, 10)
    assert [m.tag for m in messages] == ["t-1"]
    assert broker.hget("unacked", "t-1") == b"[" + payload + f',"ex","{QUEUE}"]'.encode()


@pytest.mark.parametrize("fast_client", [False, True], ids=["celery", "fast-path"])
def test_a_tail_with_an_escaped_routing_key_falls_back_to_decoding(app, broker, fast_client):
    # Given a sender's own layout, but a routing key the tail pattern does not take (it holds a quote)
    app.conf.batching_fast_client = fast_client
    app.tasks["claim.echo"].delay(1)
    app.conf.batching_fast_client = True
    sent = broker.rpop(QUEUE)
    payload = re.sub(rb'"routing_key": ?"' + QUEUE.encode() + rb'"', rb'"routing_key": "odd\\"key"', sent)
    assert payload != sent
    broker.lpush(QUEUE, payload)

    # When it is claimed, the record still carries the routing key as kombu would
    messages, _ = claim_all(broker, 10)
    record = json.loads(broker.hget("unacked", messages[0].tag))
    assert record[2] == 'odd"key'
    assert record[0] == json.loads(payload)


def test_a_payload_that_is_not_json_is_still_tracked(app, broker):
    broker.lpush(QUEUE, b"not json at all")
    messages, _ = claim_all(broker, 10)
    assert len(messages) == 1 and messages[0].tag.startswith("celery-batching:malformed:")
    assert json.loads(broker.hget("unacked", messages[0].tag)) == ["not json at all", "", QUEUE]


@pytest.mark.parametrize("repr_maxlevels", [3, 1])
def test_the_fast_path_sends_the_message_celerys_own_path_sends(app, broker, repr_maxlevels, monkeypatch):
    # Given the same call through Celery's producer and through the fast path (argsrepr cut at some depth)
    task = app.tasks["claim.echo"]
    monkeypatch.setitem(app.conf, "task_repr_maxlevels", repr_maxlevels)
    sample = {"text": "héllo", "n": [1, 2.5, {"deep": [[1]]}]}
    app.conf.batching_fast_client = False
    task.delay(sample)
    app.conf.batching_fast_client = True
    task.delay(sample)
    celerys, fast = (json.loads(raw) for raw in reversed(broker.lrange(QUEUE, 0, -1)))

    # Then both carry the same headers, properties and body, but for the ids and the fast path's own headers
    for message in (celerys, fast):
        task_id = message["headers"]["id"]
        assert message["headers"].pop("root_id") == message["properties"].pop("correlation_id") == task_id
        del message["headers"]["id"], message["properties"]["delivery_tag"]
    assert set(fast["headers"]) - set(celerys["headers"]) == {"batching_sent_at", "batching_reply_to"}
    for extra in ("batching_sent_at", "batching_reply_to"):
        del fast["headers"][extra]
    assert fast == celerys

"""Commands packed by celery_batching.resp: byte for byte what hiredis writes, and run on a real Redis."""

from __future__ import annotations

import hiredis
import pytest
import redis

from celery_batching.resp import READ_SIZE, Script, pack_command, pooled_connection, run_packed_on, send_packed

ECHO_KEYS_AND_ARGS = "return {KEYS[1], ARGV[1], #ARGV}"


@pytest.mark.parametrize(
    "args",
    [
        ("PING",),
        ("SET", "key", "value"),
        ("EVALSHA", "a" * 40, 2, "k1", "k2", 0, -7, 2**70, "", b""),
        ("SET", "clé", "naïve ✓ 日本"),  # UTF-8, lengths in bytes
        ("RPUSH", b"bin", bytes(range(256)), b"\r\n$3\r\n*"),  # binary and protocol-looking bytes kept verbatim
        ("SET", "big", b"x" * 1_000_000),
    ],
    ids=["one word", "strings", "ints and empties", "unicode", "binary", "a megabyte"],
)
def test_packs_as_hiredis_does(args):
    assert pack_command(*args) == hiredis.pack_command(args)


def test_a_script_runs_and_is_loaded_again_after_redis_forgot_it(redis_server):
    # Given a script, and a Redis that does not know it (a restart, or a newly promoted master)
    client = redis_server.client(0)
    client.script_flush()
    script = Script(ECHO_KEYS_AND_ARGS)

    # When it runs, it answers (its source went with EVAL), and Redis knows it afterwards
    assert script.run_on(client, ["k"], ["v", b"\x00" * 1000]) == [b"k", b"v", 2]
    assert client.script_exists(script.sha) == [True]
    # And a second run takes EVALSHA
    client.config_resetstat()
    assert script.run_on(client, ["k2"], [7]) == [b"k2", b"7", 1]
    assert "cmdstat_eval" not in client.info("commandstats")


def test_a_script_error_is_raised_and_the_connection_stays_usable(redis_server):
    client = redis_server.client(0)
    with pytest.raises(redis.ResponseError, match="boom"):
        Script("return redis.error_reply('boom')").run_on(client, [], [])
    assert client.ping()


def test_packed_commands_get_every_answer_whole_in_order(redis_server):
    client = redis_server.client(0)
    big = bytes(range(256)) * (2 * READ_SIZE // 256 + 1)  # an answer longer than one read of the socket
    packed = b"".join([pack_command("SET", "packed-big", big), pack_command("GET", "packed-big"), pack_command("PING")])
    assert run_packed_on(client, packed, 3) == [b"OK", big, b"PONG"]


def test_an_error_answer_raises_as_redis_py_would_once_every_answer_is_read(redis_server):
    # Given a connection, and commands of which the second fails (a list command on a string)
    client = redis_server.client(0)
    client.set("packed-string", "x")
    client.delete("packed-count")
    with pooled_connection(client) as connection:
        packed = b"".join(
            [pack_command("INCR", "packed-count"), pack_command("LPUSH", "packed-string", "y"), pack_command("PING")]
        )
        # Then it raises redis-py's class for that error, after Redis ran the third
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            send_packed(connection, packed, 3)
        # And the connection is in step: its next answer is its next command's
        assert send_packed(connection, pack_command("GET", "packed-count"), 1) == [b"1"]

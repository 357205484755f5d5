"""Compression and serializers, on the fast path and on Celery's, against an ordinary twin task.

Real redis-server and ``celery worker``. Every codec kombu has registered in
this environment (``kombu.compression.encoders()``: zlib/gzip, bzip2, lzma, and
brotli and zstd when their libraries are installed) and every serializer a
worker can be told to accept must give the batched task exactly what the same
message gives an ordinary ``@app.task`` of the same app. Bad compression fails
that one task with a named error, and a decompression bomb is cut off at
``max_sample_bytes``.
"""

from __future__ import annotations

import importlib
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest
from celery import Celery
from celery.result import AsyncResult
from kombu import compression as kombu_compression

from celery_batching import CompressionError, DecompressedSampleTooLarge, batched
from celery_batching.client.publish import can_send_fast
from celery_batching.client.replies import BatchedResult
from celery_batching.client.send_settings import FAST_CLIENT_SETTING
from celery_batching.protocol import decompress_body, envelope
from tests.fault_tools import load_app

APP = "tests.apps.formats"
# Every codec kombu registered here, by content type, and kombu's two aliases of the zlib format.
CODECS = [*sorted(kombu_compression.encoders()), "zlib", "gzip"]
PATHS = ["fast", "celery"]
# A queue nobody serves: messages wait there to be looked at, then move to the task's queue.
PARKED = "formats.parked"
# A sample with text worth compressing, non-ASCII, and the JSON scalar types.
SAMPLE = {"text": "héllo wörld ✓ " * 200, "n": 3, "xs": [1.5, None, True, "x"]}


@pytest.fixture
def formats(app_module_env) -> Iterator[ModuleType]:
    yield importlib.import_module(APP)


@contextmanager
def celery_path(app: Celery, path: str) -> Iterator[None]:
    """Send through Celery's own apply_async (``batching_fast_client=False``) when ``path`` says so."""
    if path == "fast":
        yield
        return
    app.conf[FAST_CLIENT_SETTING] = False
    try:
        yield
    finally:
        app.conf[FAST_CLIENT_SETTING] = True


def send_parked(formats: ModuleType, path: str, sample: object, **options: object) -> tuple[AsyncResult, dict]:
    """Send ``sample`` to ``echo`` by ``path``, look at the message on the wire, then let the worker have it."""
    with celery_path(formats.app, path):
        result = formats.echo.apply_async((sample,), queue=PARKED, **options)
    assert isinstance(result, BatchedResult) == (path == "fast")
    broker = formats.app.connection_for_write().default_channel.client
    [raw] = broker.lrange(PARKED, 0, -1)
    broker.lmove(PARKED, formats.echo.batch_queue, "RIGHT", "LEFT")
    return result, json.loads(raw)


@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml", "pickle"])
def test_every_codec_and_serializer_matches_an_ordinary_task(formats, start_worker, serializer):
    # Given a worker that accepts this serializer (pickle only because it is opted in here;
    # Celery refuses pickle in a worker running as root unless C_FORCE_ROOT is set)
    start_worker(APP, env={"CB_ACCEPT_CONTENT": f"json,{serializer}", "C_FORCE_ROOT": "1"})
    mismatches = []
    for codec in CODECS:
        for path in PATHS:
            # When the same sample goes, compressed and serialized alike, to the batched task and its twin
            batched_result, wire = send_parked(formats, path, SAMPLE, serializer=serializer, compression=codec)
            plain = formats.plain_echo.apply_async((SAMPLE,), serializer=serializer, compression=codec)
            # Then the message really was compressed with that codec
            assert wire["headers"]["compression"] == kombu_compression.get_encoder(codec)[1], (codec, path)
            assert wire["content-type"] != "application/json" or serializer == "json"
            # And both tasks saw the same sample and stored the same result
            got, expected = batched_result.get(timeout=20), plain.get(timeout=20)
            if got != expected or batched_result.state != plain.state:
                mismatches.append((codec, path, got, expected))
    assert mismatches == []
    assert expected["sample"] == SAMPLE


def test_task_compression_setting_applies_on_both_paths(redis_url, start_worker):
    # Given an app whose task_compression is set before it sends anything (Celery reads it once)
    start_worker(APP)
    client = load_app(APP, redis_url)
    client.app.conf.task_compression = "bzip2"
    for path in PATHS:
        # When a plain .delay() is sent
        result, wire = send_parked(client, path, "compress me")
        # Then it is compressed as configured, and runs
        assert wire["headers"]["compression"] == "application/x-bz2", path
        assert result.get(timeout=20) == {"sample": "compress me", "type": "str"}


def _push_with_header(formats: ModuleType, task_id: str, body_codec: str | None, header: object, sample: object):
    """Push a message for ``echo`` whose body is compressed with ``body_codec`` and whose header says ``header``."""
    payload = json.loads(
        envelope(
            formats.echo,
            task_id,
            sample,
            formats.echo.batch_queue,
            expires=None,
            ignore_result=False,
            compression=body_codec,
        )
    )
    payload["headers"]["compression"] = header
    broker = formats.app.connection_for_write().default_channel.client
    broker.lpush(formats.echo.batch_queue, json.dumps(payload))
    return AsyncResult(task_id, app=formats.app)


@pytest.mark.parametrize(
    ("body_codec", "header", "error"),
    [
        ("zlib", "application/x-snappy", "kombu knows no such codec"),
        ("zlib", "bzip2", "Invalid data stream"),
        ("bzip2", "application/x-gzip", "incorrect header check"),
        (None, "lzma", "LZMAError"),
        ("zlib", 7, "the compression header is not a string"),
    ],
    ids=["unknown", "zlib-named-bzip2", "bzip2-named-gzip", "uncompressed-named-lzma", "not-a-string"],
)
def test_a_body_that_does_not_match_its_compression_header_fails_alone(
    formats, start_worker, body_codec, header, error
):
    # Given a worker
    start_worker(APP)
    # When a message arrives whose compression header names an unknown codec or another one than the body's
    bad = _push_with_header(formats, f"bad-{body_codec}-{header}", body_codec, header, "x")
    # Then that task fails with CompressionError, naming the codec and the reason
    with pytest.raises(CompressionError, match=rf"formats.echo: cannot decompress .*{error}"):
        bad.get(timeout=20)
    assert bad.state == "FAILURE"
    # And the worker serves on, compressed or not
    assert formats.echo.delay("fine").get(timeout=20)["sample"] == "fine"
    assert formats.echo.apply_async(("fine",), compression="lzma").get(timeout=20)["sample"] == "fine"


def test_a_decompression_bomb_is_cut_off_at_max_sample_bytes(formats, start_worker):
    # Given a worker whose echo task accepts samples up to 64 KiB
    start_worker(APP)
    # When a sample of a few KiB compressed but 20 MiB decompressed arrives, next to a normal one
    bomb = formats.echo.apply_async(("0" * (20 << 20),), compression="zlib")
    normal = formats.echo.apply_async(("0" * 1000,), compression="zlib")
    # Then the bomb fails, named, without the worker decompressing it in full; the normal one runs
    with pytest.raises(
        DecompressedSampleTooLarge,
        match=r"formats.echo: sample of \d+ compressed bytes "
        r"decompresses to more than max_sample_bytes=65536 bytes",
    ):
        bomb.get(timeout=20)
    assert normal.get(timeout=20)["sample"] == "0" * 1000


# -- without servers: the bounded decoder, the fast path's choice -------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_decompression_is_bounded_for_every_registered_codec(codec):
    compressed, content_type = kombu_compression.compress(b"a" * 10_000, codec)
    assert decompress_body("t", compressed, content_type, 10_000) == b"a" * 10_000
    with pytest.raises(DecompressedSampleTooLarge):
        decompress_body("t", compressed, content_type, 9_999)
    with pytest.raises(CompressionError, match="truncated"):
        decompress_body("t", compressed[: len(compressed) // 2], content_type, 10_000)


def test_without_a_limit_kombu_decompresses_in_one_go():
    assert decompress_body("t", zlib.compress(b"b" * 5000), "zlib", None) == b"b" * 5000


def test_a_codec_that_cannot_be_bounded_is_refused_under_a_limit():
    # Given a codec registered with kombu by the user, whose output cannot be bounded while decompressing
    kombu_compression.register(lambda body: body[::-1], lambda body: body[::-1], "application/x-reversed")
    # Then under a limit it is refused, naming the fix; without one it is kombu's to decompress
    with pytest.raises(CompressionError, match="set max_sample_bytes=None on the task"):
        decompress_body("t", b"cba", "application/x-reversed", 100)
    assert decompress_body("t", b"cba", "application/x-reversed", None) == b"abc"


def _identity(batch: list) -> list:
    return batch


def test_the_fast_path_takes_compression_and_serializer_but_only_a_redis_backend(tmp_path):
    redis_app = Celery("fast", broker="redis://127.0.0.1:1/0", backend="redis://127.0.0.1:1/1", set_as_current=False)
    db_app = Celery(
        "slow", broker="redis://127.0.0.1:1/0", backend=f"db+sqlite:///{tmp_path}/r.db", set_as_current=False
    )
    on_redis, on_db = batched(redis_app, name="r")(_identity), batched(db_app, name="d")(_identity)
    options = {"queue": "r", "compression": "zlib", "serializer": "msgpack"}
    assert can_send_fast(on_redis, (1,), None, options)
    assert not can_send_fast(on_db, (1,), None, options)

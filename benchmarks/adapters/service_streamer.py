"""service-streamer's three streamers, as its README shows them (anchors' venv).

ThreadedStreamer and Streamer live inside the client process (the web
server, in service-streamer's picture); RedisStreamer sends through Redis to
worker processes started by the harness (:mod:`benchmarks.anchors.redis_streamer_worker`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from service_streamer import RedisStreamer, Streamer, ThreadedStreamer

from ..anchors.streamer_model import StreamerModel, cuda_devices
from ..knobs import ANCHOR_MAX_WAIT, BATCH_SIZE, STREAMER_PREFIX
from . import Adapter, local_model


class _FutureAdapter(Adapter):
    """Each request is ``streamer.submit([sample])``; its future holds a list of one."""

    _streamer: Any

    def submit(self, sample: Any) -> Any:
        return self._streamer.submit([sample])

    def wait(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout)[0]


class ThreadedAdapter(_FutureAdapter):
    """``ThreadedStreamer(model.predict, 64, 0.1)`` in this process."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._streamer = ThreadedStreamer(local_model(self).predict, BATCH_SIZE, ANCHOR_MAX_WAIT)

    def close(self) -> None:
        self._streamer.destroy_workers()


class StreamerAdapter(_FutureAdapter):
    """``Streamer(ManagedModel, 64, 0.1, worker_num=N)``: spawned worker processes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._streamer = Streamer(
            StreamerModel, BATCH_SIZE, ANCHOR_MAX_WAIT, worker_num=self.workers, cuda_devices=cuda_devices(self.device)
        )

    def close(self) -> None:
        self._streamer.destroy_workers()


class RedisStreamerAdapter(_FutureAdapter):
    """``RedisStreamer(redis_broker=host:port, prefix=...)``: one per client process."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        address = urlsplit(self.redis_url or "redis://127.0.0.1:6379")
        self._streamer = RedisStreamer(redis_broker=f"{address.hostname}:{address.port}", prefix=STREAMER_PREFIX)

"""In-process streamer: batching with no broker (service-streamer's ThreadedStreamer).

Same engine and flush policy as the workers, for code that has the model in
its own process: threads call :meth:`LocalStreamer.predict` or
:meth:`LocalStreamer.submit` with a few samples each, and one thread runs
``predict`` on batches made of everyone's samples.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from .batcher import Batcher, BatchReport, PredictFn, Request
from .policy import FlushPolicy


class _Gather:
    """Collects the outcomes of one submitted list into one future."""

    def __init__(self, size: int) -> None:
        self.future: Future[list[Any]] = Future()
        self.values: list[Any] = [None] * size
        self.remaining = size
        self.lock = threading.Lock()

    def settle(self, index: int, value: Any, error: BaseException | None) -> None:
        with self.lock:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
                return
            self.values[index] = value
            self.remaining -= 1
            if self.remaining == 0:
                self.future.set_result(self.values)


class LocalStreamer:
    """Batch ``predict`` calls from many threads of this process.

    ``streamer.predict(samples)`` blocks and returns one output per sample;
    ``streamer.submit(samples)`` returns a :class:`concurrent.futures.Future`
    of that list. A sample whose prediction raised makes its list's future
    raise that exception; the other samples of the batch are unaffected.
    """

    def __init__(
        self, predict: PredictFn, max_batch_size: int = 64, max_wait: float = 0.0, name: str = "local"
    ) -> None:
        self._batcher = Batcher(name, predict, FlushPolicy(max_batch_size, max_wait), self._settle)
        self._batcher.start()
        self._closed = False

    def submit(self, samples: Sequence[Any]) -> Future[list[Any]]:
        if self._closed:
            raise RuntimeError("LocalStreamer is closed")
        gather = _Gather(len(samples))
        if not samples:
            gather.future.set_result([])
        self._batcher.put([Request(sample, context=(gather, index)) for index, sample in enumerate(samples)])
        return gather.future

    def predict(self, samples: Sequence[Any], timeout: float | None = None) -> list[Any]:
        return self.submit(samples).result(timeout)

    def close(self) -> None:
        """Finish the running batch and fail whatever was never started."""
        self._closed = True
        for request in self._batcher.stop():
            gather, index = request.context
            gather.settle(index, None, RuntimeError("LocalStreamer closed before this sample ran"))

    def __enter__(self) -> LocalStreamer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _settle(report: BatchReport) -> None:
        for outcome in report.outcomes:
            gather, index = outcome.request.context
            gather.settle(index, outcome.value, outcome.error)

"""Systems with the model in the client's own process and no queue at all."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from . import Adapter, local_model


class DirectAdapter(Adapter):
    """``predict`` on full batches in a loop: the upper bound nothing can beat."""

    full_batches = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._model = local_model(self)

    def submit(self, sample: Any) -> Any:
        return self._model.predict([sample])[0]

    def wait(self, handle: Any, timeout: float) -> Any:
        return handle

    def call_batch(self, samples: list[Any]) -> list[Any]:
        return self._model.predict(samples)


class NaiveAdapter(DirectAdapter):
    """``predict([x])`` per request, from as many threads as requests in flight."""

    full_batches = False


class OursLocalAdapter(Adapter):
    """Our in-process streamer (celery_batching.LocalStreamer), default knobs but batch 64."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from celery_batching import LocalStreamer

        self._model = local_model(self)
        self._streamer = LocalStreamer(self._model.predict, max_batch_size=64)

    def submit(self, sample: Any) -> Future:
        return self._streamer.submit([sample])

    def wait(self, handle: Future, timeout: float) -> Any:
        return handle.result(timeout)[0]

    def close(self) -> None:
        self._streamer.close()

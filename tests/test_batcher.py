"""The engine with an in-memory model that records its batches (no broker)."""

from __future__ import annotations

import threading

import pytest

from celery_batching import BatchSizeMismatch, FlushPolicy, LocalStreamer
from celery_batching.engine.batcher import Batcher, BatchReport, Request, predict_isolated


class RecordingModel:
    """Doubles numbers, records each batch, refuses the sample -1, and can be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def predict(self, batch: list[int]) -> list[int]:
        self.entered.set()
        self.release.wait(10)
        self.batches.append(list(batch))
        if -1 in batch:
            raise ValueError("-1 is unlucky")
        return [2 * x for x in batch]


def test_predict_isolated_bisects_so_only_the_bad_sample_fails():
    model = RecordingModel()
    results = predict_isolated("t", model.predict, [1, 2, -1, 4, 5, 6, 7, 8])
    assert [value for value, _ in results] == [2, 4, None, 8, 10, 12, 14, 16]
    errors = [error for _, error in results]
    assert isinstance(errors[2], ValueError) and str(errors[2]) == "-1 is unlucky"
    assert all(error is None for i, error in enumerate(errors) if i != 2)
    # the good half ran once, whole; the bad path was split down to one sample
    assert [-1] in model.batches and model.batches[0] == [1, 2, -1, 4, 5, 6, 7, 8]


def test_out_of_memory_on_a_big_batch_is_retried_in_halves_before_failing_anything():
    class OutOfMemoryError(RuntimeError):
        pass

    seen = []

    def predict(batch):
        seen.append(len(batch))
        if len(batch) > 2:
            raise OutOfMemoryError("CUDA out of memory")
        return batch

    results = predict_isolated("t", predict, list(range(8)))
    assert [value for value, _ in results] == list(range(8))
    assert seen[:3] == [8, 4, 2]


@pytest.mark.parametrize(
    ("output", "got"),
    [([1], "1"), ([1, 2, 3, 4], "4"), (None, "a NoneType"), (7, "a int")],
)
def test_wrong_output_length_fails_every_sample_with_a_named_error(output, got):
    results = predict_isolated("proj.embed", lambda batch: output, [1, 2, 3])
    for value, error in results:
        assert value is None
        assert isinstance(error, BatchSizeMismatch)
        assert str(error).startswith(f"proj.embed: predict() returned {got} results for a batch of 3 samples")


def test_batches_grow_while_the_model_is_busy():
    # Given a model held inside its first batch
    model = RecordingModel()
    model.release.clear()
    reports: list[BatchReport] = []
    done = threading.Event()

    def on_done(report):
        reports.append(report)
        if sum(len(r.outcomes) for r in reports) == 11:
            done.set()

    batcher = Batcher("t", model.predict, FlushPolicy(max_batch_size=64), on_done)
    batcher.start()
    batcher.put([Request(0)])
    assert model.entered.wait(5)
    # When ten more arrive while it runs
    batcher.put([Request(i) for i in range(1, 11)])
    model.release.set()
    # Then they form the next batch together
    assert done.wait(5)
    assert model.batches == [[0], list(range(1, 11))]
    batcher.stop()


def test_room_is_one_batch_beyond_the_running_one():
    model = RecordingModel()
    model.release.clear()
    batcher = Batcher("t", model.predict, FlushPolicy(max_batch_size=4), lambda report: None)
    batcher.start()
    batcher.put([Request(i) for i in range(4)])
    assert model.entered.wait(5)
    assert batcher.room() == 4  # the running batch left the queue
    batcher.put([Request(i) for i in range(4)])
    assert batcher.room() == 0
    assert batcher.wait_for_room(0.01) == 0
    model.release.set()
    assert batcher.wait_for_room(5) == 4
    batcher.stop()


def test_finished_batches_count_against_room_until_released():
    # Given a batcher whose feeder holds finished batches until it has stored them
    handed_over: list[BatchReport] = []
    done = threading.Event()
    batcher = Batcher(
        "t",
        RecordingModel().predict,
        FlushPolicy(max_batch_size=4),
        lambda report: (handed_over.append(report), done.set()),
        hold_done=True,
    )
    batcher.start()
    # When a batch finishes and the feeder has not released it yet
    batcher.put([Request(i) for i in range(4)])
    assert done.wait(5)
    # Then the idle model may take one more batch while the unstored one is stored, and no more
    assert batcher.room() == 4
    batcher.hold(4)  # the feeder's own, as for messages that never reach the model
    assert batcher.room() == 0
    assert batcher.wait_for_room(0.01) == 0
    # And releasing what is stored gives the room back
    batcher.release(4)
    assert batcher.wait_for_room(5) == 4
    batcher.release(2)
    assert batcher.room() == 4  # never more than a batch in one claim
    batcher.stop()


def test_stop_finishes_the_running_batch_and_returns_the_unstarted():
    model = RecordingModel()
    model.release.clear()
    finished: list[BatchReport] = []
    batcher = Batcher("t", model.predict, FlushPolicy(max_batch_size=2), finished.append)
    batcher.start()
    batcher.put([Request(1), Request(2), Request(3)])
    assert model.entered.wait(5)
    stopper = threading.Thread(target=lambda: finished.append(batcher.stop()))
    stopper.start()
    model.release.set()
    stopper.join(5)
    report, unstarted = finished
    assert [o.value for o in report.outcomes] == [2, 4]
    assert [r.sample for r in unstarted] == [3]


def test_admission_refuses_before_the_model_sees_the_sample():
    model = RecordingModel()
    refusal = RuntimeError("revoked")
    batcher = Batcher(
        "t",
        model.predict,
        FlushPolicy(),
        lambda r: None,
        admit=lambda request: refusal if request.sample == 2 else None,
    )
    report = batcher.run_batch([Request(1), Request(2), Request(3)])
    assert model.batches == [[1, 3]]
    by_sample = {o.request.sample: (o.value, o.error) for o in report.outcomes}
    assert by_sample == {1: (2, None), 2: (None, refusal), 3: (6, None)}


def test_local_streamer_predict_and_future_api():
    model = RecordingModel()
    with LocalStreamer(model.predict, max_batch_size=8) as streamer:
        assert streamer.predict([1, 2, 3]) == [2, 4, 6]
        futures = [streamer.submit([i, i + 1]) for i in range(0, 20, 2)]
        assert [f.result(5) for f in futures] == [[i * 2, i * 2 + 2] for i in range(0, 20, 2)]
        assert max(len(b) for b in model.batches) <= 8


def test_local_streamer_isolates_a_bad_sample_to_its_own_caller():
    model = RecordingModel()
    with LocalStreamer(model.predict) as streamer:
        model.release.clear()
        good = streamer.submit([1, 2])
        assert model.entered.wait(5)
        bad = streamer.submit([-1])
        other = streamer.submit([3])
        model.release.set()
        assert good.result(5) == [2, 4]
        assert other.result(5) == [6]
        with pytest.raises(ValueError, match="-1 is unlucky"):
            bad.result(5)


def test_local_streamer_from_many_threads_batches_them_together():
    model = RecordingModel()
    model.release.clear()
    with LocalStreamer(model.predict, max_batch_size=64) as streamer:
        first = streamer.submit([0])
        assert model.entered.wait(5)
        futures = [streamer.submit([i]) for i in range(1, 33)]
        model.release.set()
        assert [f.result(5) for f in futures] == [[2 * i] for i in range(1, 33)]
        assert first.result(5) == [0]
    assert model.batches[1] == list(range(1, 33))


def test_closed_local_streamer_refuses_new_work():
    streamer = LocalStreamer(lambda batch: batch)
    streamer.close()
    with pytest.raises(RuntimeError, match="closed"):
        streamer.submit([1])

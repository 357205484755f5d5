"""Array and tensor outputs of predict become one plain value per sample, as ``.tolist()`` gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from celery_batching import fastjson
from celery_batching.engine.batcher import predict_isolated
from celery_batching.errors import BatchSizeMismatch
from celery_batching.worker.arrays import as_rows, plain_value

SHAPES = [(4,), (4, 3), (4, 2, 3)]
NUMPY_TYPES = [np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_]
TORCH_TYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.bool]


def _numpy(shape, dtype):
    return (np.arange(np.prod(shape)).reshape(shape) * 0.37).astype(dtype)


def stored(rows) -> list:
    """What a result backend's JSON holds for each row: the fast codec's, and kombu's for the plain value."""
    fast = [json.loads(fastjson.dumps(row)) for row in rows]
    assert fast == [json.loads(json.dumps(plain_value(row))) for row in rows]
    return fast


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", NUMPY_TYPES, ids=lambda t: t.__name__)
def test_numpy_batches_split_along_the_first_axis(shape, dtype):
    batch = _numpy(shape, dtype)
    rows = as_rows(batch)
    assert [plain_value(row) for row in rows] == [row.tolist() for row in batch]
    assert stored(rows) == [row.tolist() for row in batch]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", TORCH_TYPES, ids=str)
def test_torch_batches_split_along_the_first_axis(shape, dtype):
    batch = torch.from_numpy(_numpy(shape, np.float64)).to(dtype)
    rows = as_rows(batch)
    assert [plain_value(row) for row in rows] == [row.tolist() for row in batch]
    assert stored(rows) == [row.tolist() for row in batch]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_rows_of_floats_are_written_as_their_tolist_whatever_the_values(dtype):
    rng = np.random.default_rng(7)
    decades = int(np.log10(np.finfo(dtype).max)) - 1  # every magnitude the type holds, subnormals included
    batch = (rng.standard_normal((8, 384)) * 10.0 ** rng.integers(-decades - 5, decades, (8, 384))).astype(dtype)
    rows = as_rows(batch)
    assert all(isinstance(row, np.ndarray) and row.dtype == np.float64 for row in rows)  # the fast path
    assert stored(rows) == [row.tolist() for row in batch]


def test_a_batch_is_checked_once_not_row_by_row(monkeypatch):
    batch = np.arange(12.0).reshape(4, 3)
    rows = fastjson.vouched_rows(batch)
    assert rows is not None and all(isinstance(row, np.ndarray) for row in rows)
    monkeypatch.setattr(fastjson, "writes_as_tolist", lambda value: pytest.fail("a vouched row checked again"))
    assert [json.loads(fastjson.dumps(row)) for row in rows] == batch.tolist()
    assert [plain_value(row) for row in rows] == batch.tolist()  # user code sees plain lists
    monkeypatch.undo()
    assert fastjson.vouched_rows(np.array([[1.0, np.nan]])) is None  # kombu writes NaN: never vouched
    assert fastjson.vouched_rows(np.zeros((2, 2), dtype=np.float32)) is None  # float32's own shortest form
    assert fastjson.vouched_rows(np.zeros((2, 4))[:, ::2]) is None  # not contiguous


@pytest.mark.parametrize("buffer", [np.zeros((3, 4)), np.zeros((3, 4), np.int64), torch.zeros(3, 4, dtype=torch.int64)])
def test_rows_keep_their_values_when_the_model_reuses_its_output_buffer(buffer):
    # Given a model that writes every output into one buffer (rows are stored while the next batch runs),
    # then the rows of a batch are what it returned, not what it wrote next.
    buffer[:] = 1
    rows = as_rows(buffer)
    buffer[:] = 2
    assert stored(rows) == [[1] * 4] * 3


def test_non_finite_floats_are_written_as_kombu_writes_them():
    batch = np.array([[np.nan, 1.0], [np.inf, -np.inf]], dtype=np.float32)
    rows = as_rows(batch)
    assert rows == batch.tolist() or all(isinstance(row, list) for row in rows)  # plain: no null for NaN
    assert fastjson.dumps(rows[1]) == "[Infinity, -Infinity]"


def test_the_fast_codec_takes_only_arrays_it_writes_as_their_tolist():
    # float32 arrays and numpy scalars would come out in float32's shortest form: kombu's path decides
    # (and refuses them, as for any ordinary task returning them)
    for value in (np.array([0.1], dtype=np.float32), np.float32(0.1), np.arange(6.0)[::2]):
        with pytest.raises(TypeError):
            fastjson.dumps(value)
    assert json.loads(fastjson.dumps(np.array([0.1], dtype=np.float32).astype(np.float64))) == [0.10000000149011612]


def test_a_tensor_that_requires_grad_and_lists_of_rows():
    weights = torch.ones(3, 2, requires_grad=True)
    assert stored(as_rows(weights * 2)) == [[2.0, 2.0]] * 3
    assert as_rows([np.float32(0.5), torch.tensor([1, 2]), "text"]) == [0.5, [1, 2], "text"]
    assert as_rows(("already", "plain")) == ("already", "plain")


def test_float32_comes_back_exactly():
    value = np.float32(0.1)
    ((back,),) = stored(as_rows(np.array([[value]], dtype=np.float32)))
    assert np.float32(back) == value and back == 0.10000000149011612


def test_a_scalar_or_a_short_array_is_a_size_mismatch():
    for output in (np.float32(1.0), np.array(3.0), torch.tensor(2.0), np.zeros((2, 5))):
        ((_value, error),) = set(predict_isolated("t", lambda batch, o=output: as_rows(o), [1, 2, 3]))
        assert isinstance(error, BatchSizeMismatch)


@pytest.fixture
def arrays(app_module_env):
    import importlib

    return importlib.import_module("tests.apps.arrays")


def test_a_worker_stores_array_rows_as_an_ordinary_task_stores_tolist(arrays, start_worker):
    from celery_batching import gather, submit_many

    samples = [0.5, 1.0, 2.5, 7.0]
    batched_numpy = submit_many(arrays.b_numpy, samples)
    batched_torch = submit_many(arrays.b_torch, samples)
    rows = submit_many(arrays.b_rows, [0, 2, 3])
    ordinary_numpy = [arrays.o_numpy.delay(x) for x in samples]
    ordinary_torch = [arrays.o_torch.delay(x) for x in samples]
    start_worker("tests.apps.arrays")
    assert gather(batched_numpy, timeout=30) == [r.get(timeout=30) for r in ordinary_numpy]
    assert gather(batched_torch, timeout=30) == [r.get(timeout=30) for r in ordinary_torch]
    assert gather(rows, timeout=30) == [[], [0, 1], [0, 1, 2]]


def test_monitors_see_array_rows_as_an_ordinary_task_shows_its_list(arrays, start_worker, redis_server):
    from celery_batching import gather, submit_many
    from tests.fault_tools import TaskEventLog
    from tests.servers import wait_until

    # Given a worker sending task events, and a batched task returning a numpy array beside its ordinary twin
    start_worker("tests.apps.arrays", "-E")
    with TaskEventLog(redis_server.client(0)) as events:
        batched_result = submit_many(arrays.b_numpy, [2.5])[0]
        ordinary = arrays.o_numpy.delay(2.5)
        assert gather([batched_result], timeout=30) == [ordinary.get(timeout=30)]
        # Then the task-succeeded events show the same result
        wait_until(lambda: {batched_result.id, ordinary.id} <= events.results.keys(), 10, "both task-succeeded events")
    assert events.results[batched_result.id] == events.results[ordinary.id]


def test_a_callback_gets_array_rows_as_an_ordinary_tasks_list(arrays, start_worker):
    from celery.result import AsyncResult

    from tests.servers import wait_until

    # Given a batched task returning a numpy array and its ordinary twin, each linked to a callback
    start_worker("tests.apps.arrays")
    batched_result = arrays.b_numpy.apply_async((2.5,), link=arrays.o_echo.s())
    ordinary = arrays.o_numpy.apply_async((2.5,), link=arrays.o_echo.s())
    assert batched_result.get(timeout=30) == ordinary.get(timeout=30)

    # Then each callback runs with the parent's result, the same list
    def callback_result(parent):
        parent = AsyncResult(parent.id, app=arrays.app)
        children = parent.children or []
        return children[0].get(timeout=30) if children else None

    wait_until(lambda: callback_result(batched_result) is not None, 30, "the batched task's callback")
    assert callback_result(batched_result) == callback_result(ordinary) == [0.25, 2.5, 7.5]

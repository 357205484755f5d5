"""Batch outputs that are arrays or tensors, turned into one plain value per sample.

A model returns what the framework gives it: a numpy array or a torch tensor
(on any device) with one row per sample, or a list of such rows. A result
backend stores JSON, so each sample's result is stored as the value an
ordinary task returning ``row.tolist()`` would store, then split along the
first axis by the engine.

A batch of vectors (two or more dimensions) of floats, integers or booleans
stays a numpy array (one device-to-host copy for a GPU tensor), widened to
float64, which is what ``tolist()`` gives: its rows are written to JSON by
orjson straight from memory (:mod:`celery_batching.fastjson`), with no Python
float made per element (a 384-float row: about 24 µs instead of 34 here;
writing each float's shortest text, ~40 ns, is what remains). Anything else
(one value per sample, non-finite floats, bfloat16, complex) is made plain
with one ``tolist()`` call for the batch.

Precision: ``tolist()`` turns float16/float32 elements into Python floats that
hold the stored value exactly, and JSON writes the shortest text that reads
back as that float, so a float32 comes back bit for bit after ``float32(x)``
(e.g. ``0.1f`` is stored as ``0.10000000149011612``).

Duck-typed (``shape`` and ``tolist``): neither numpy nor torch is imported
here; numpy is used only when the output is an array and numpy is loaded.
Callers that hand a value on to user code (signals, callbacks) make rows
plain with :func:`plain_value`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import fastjson


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and callable(getattr(value, "tolist", None))


def _plain(value: Any) -> Any:
    """An array, tensor or numpy scalar as the nested lists and numbers ``tolist()`` gives."""
    detach = getattr(value, "detach", None)  # a torch tensor that requires grad
    return (detach() if callable(detach) else value).tolist()


def _numpy_rows(value: Any) -> list[Any] | None:
    """A batch of two or more dimensions as C-contiguous numpy rows orjson writes exactly, or ``None``."""
    numpy = sys.modules.get("numpy")
    if numpy is None or len(value.shape) < 2:
        return None
    try:
        array = value if isinstance(value, numpy.ndarray) else value.detach().cpu().numpy()
    except (AttributeError, TypeError, RuntimeError):  # not torch, or a dtype numpy lacks (bfloat16)
        return None
    # A C-contiguous copy, float64 for any float width (what tolist() makes of it). A copy, since rows are
    # stored while the next batch runs: a model may reuse the memory of its output for the next one.
    array = numpy.array(array, dtype=numpy.float64 if array.dtype.kind == "f" else None, order="C")
    # Refused: non-finite floats (kombu's JSON writes NaN, orjson null), complex, strings, objects.
    return fastjson.vouched_rows(array)


def plain_value(value: Any) -> Any:
    """A result as user code expects it: a numpy row as its ``tolist()``, anything else unchanged."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return value.tolist()
    return value


def as_rows(outputs: Any) -> Any:
    """``predict``'s output with arrays as rows or plain values; anything else unchanged.

    Its length is checked later: a 0-d array becomes a number, which that check refuses.
    """
    if _is_array(outputs):
        rows = _numpy_rows(outputs)
        return rows if rows is not None else _plain(outputs)
    if isinstance(outputs, (list, tuple)) and any(_is_array(output) for output in outputs):
        return [_plain(output) if _is_array(output) else output for output in outputs]
    return outputs


def plain_outputs(predict: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Sequence[Any]]:
    """``predict`` whose array or tensor outputs come back as plain rows."""

    def predict_plain(samples: list[Any]) -> Sequence[Any]:
        return as_rows(predict(samples))  # type: ignore[no-any-return]

    return predict_plain

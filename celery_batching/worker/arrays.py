"""Batch outputs that are arrays or tensors, turned into one plain value per sample.

A model returns what the framework gives it: a numpy array or a torch tensor
(on any device) with one row per sample, or a list of such rows. A result
backend stores JSON, so each sample's result is stored as the value an
ordinary task returning ``row.tolist()`` would store. The whole batch is
converted with one ``tolist()`` call (one device-to-host copy for a GPU
tensor), then split along the first axis by the engine.

Precision: ``tolist()`` turns float16/float32 elements into Python floats that
hold the stored value exactly, and JSON writes the shortest text that reads
back as that float, so a float32 comes back bit for bit after ``float32(x)``
(e.g. ``0.1f`` is stored as ``0.10000000149011612``).

Duck-typed (``shape`` and ``tolist``): neither numpy nor torch is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and callable(getattr(value, "tolist", None))


def _plain(value: Any) -> Any:
    """An array, tensor or numpy scalar as the nested lists and numbers ``tolist()`` gives."""
    detach = getattr(value, "detach", None)  # a torch tensor that requires grad
    return (detach() if callable(detach) else value).tolist()


def as_rows(outputs: Any) -> Any:
    """``predict``'s output with arrays made plain; anything else unchanged (its length is checked later)."""
    if _is_array(outputs):
        return _plain(outputs)  # a 0-d array becomes a number, which the length check then refuses
    if isinstance(outputs, (list, tuple)) and any(_is_array(output) for output in outputs):
        return [_plain(output) if _is_array(output) else output for output in outputs]
    return outputs


def plain_outputs(predict: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Sequence[Any]]:
    """``predict`` whose array or tensor outputs come back as plain rows."""

    def predict_plain(samples: list[Any]) -> Sequence[Any]:
        return as_rows(predict(samples))  # type: ignore[no-any-return]

    return predict_plain

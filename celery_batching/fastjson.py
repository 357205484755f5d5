"""kombu's JSON, made fast with orjson where the answer is provably the same.

At GPU speed kombu's JSON is the per-sample cost that decides: about 126 µs to
encode one 384-float result in the worker and 69 µs to decode it in the
client. orjson does both in a few µs, but it is not kombu's JSON: it writes
NaN and infinity as ``null``, serialises UUIDs, enums, datetimes and
dataclasses its own way, and ignores ``__json__`` and kombu's ``__type__``
envelopes. So each function here takes the orjson path only for values where
the decoded result is exactly what kombu's would be, and hands everything
else to kombu (or the standard library) unchanged: same value, same error.

Both sides use it (the worker encodes results and decodes claimed messages,
the client decodes replies), so it sits next to :mod:`celery_batching.protocol`
rather than inside either.
"""

from __future__ import annotations

import enum
import sys
import uuid
from typing import Any

import orjson
from kombu.utils.json import dumps as kombu_dumps, loads as kombu_loads

# Types orjson writes natively but kombu writes differently (or refuses): never given to orjson.
_NATIVE_ELSEWHERE = (uuid.UUID, enum.Enum, orjson.Fragment)
#: orjson options: subclasses of str/int/dict/list, datetimes and dataclasses go to ``default`` (or fail without one).
PASSTHROUGH_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)
# numpy dtype kinds orjson writes as the JSON of tolist(): integers and booleans (floats only as float64).
_EXACT_ARRAY_KINDS = frozenset("iub")
# In a JSON text, what would make kombu's object hook act: a "__type__" envelope, or an escaped
# ASCII character that could spell one (looked for only in a text with a backslash: one memchr,
# where a search for the escape itself takes some 1 ns per byte of a batch's floats). Such texts
# are decoded by kombu itself.
_HOOK_MARKER = b"__type__"
_ESCAPED_ASCII = b"\\u00"
# orjson reads an integer beyond 64 bits as a float, json as an int. Such an integer is a run of
# at least 19 digits (-2**63 - 1 has 19). A text holding any run of 19 digits is left to json: the
# text is mapped (digits to "0", the rest to " ") and searched, two C loops instead of a regex.
_DIGITS = bytes(ord("0") if chr(c).isdigit() and c < 128 else ord(" ") for c in range(256))
_BIG_INT = b"0" * 19


class _Refused(TypeError):
    """orjson met a value only kombu's encoder knows how to write."""


# The ndarray subclass of rows checked once with their batch (see vouched_rows); made at first use,
# since numpy is imported only by models that return arrays.
_vouched_rows: type | None = None


def _default(value: Any) -> Any:
    """What orjson does not write itself: a numpy array it writes as its ``tolist()`` is, from memory.

    kombu's JSON refuses arrays; a result row is the one extension, written as
    the JSON of ``row.tolist()`` (what an ordinary task returning it stores).
    Rows of a batch checked by :func:`vouched_rows` are not checked again.
    Everything else is refused, and falls back to kombu.
    """
    vouched = _vouched_rows is not None and type(value) is _vouched_rows  # checked with its batch
    if not vouched and not writes_as_tolist(value):
        raise _Refused(type(value).__name__)
    array = value.view(type(value).__base__) if vouched else value  # orjson writes ndarray, not subclasses
    return orjson.Fragment(orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY))


def vouched_rows(batch: Any) -> list[Any] | None:
    """The rows of a numpy ``batch`` as arrays :func:`dumps` writes unchecked, or ``None`` if it may not.

    A batch that :func:`writes_as_tolist` writes as its ``tolist()`` has rows
    that are too, so the check (about 6 µs for a 384-float row) is made once
    per batch. The rows are views of the batch, of an ndarray subclass that
    marks them; anything that needs a plain value of them calls ``tolist()``.
    """
    global _vouched_rows
    if not writes_as_tolist(batch):
        return None
    if _vouched_rows is None:
        _vouched_rows = type("VouchedRows", (type(batch),), {"__doc__": "Rows checked with their batch."})
    return list(batch.view(_vouched_rows))


def _plain(value: Any) -> bool:
    """Whether orjson writes ``value`` as kombu would, as far as types orjson takes natively.

    Types orjson refuses need no check here: they reach :func:`_default` and
    fall back. What is checked is what orjson would write *differently*:
    non-finite floats and the types in :data:`_NATIVE_ELSEWHERE`.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is list or kind is tuple:
        try:
            total = sum(value)  # a numeric list: one C loop; finite sum => every float finite
        except TypeError:
            return all(_plain(item) for item in value)
        try:
            return bool(total - total == 0)
        except Exception:  # noqa: BLE001 - an odd numeric type: let orjson refuse it
            return True
    if kind is dict:
        return all(_plain(item) for item in value.values()) and all(_plain(key) for key in value)
    if isinstance(value, float):
        return value - value == 0.0
    return not isinstance(value, _NATIVE_ELSEWHERE)  # numpy arrays: _default decides


def writes_as_tolist(value: Any) -> bool:
    """Whether ``value`` is a numpy array orjson writes as the JSON of its ``tolist()``.

    C-contiguous arrays of float64 (finite), integers or booleans. Other float
    widths orjson writes in their own shortest form (``0.1`` for a float32 that
    ``tolist()`` reads as ``0.10000000149011612``); they fall back.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None or type(value) is not numpy.ndarray or not value.flags.c_contiguous:
        return False
    if value.dtype.kind in _EXACT_ARRAY_KINDS:
        return True
    return value.dtype == numpy.float64 and bool(numpy.isfinite(value).all())


def dumps(value: Any) -> bytes | str:
    """``value`` as JSON: orjson's bytes when they decode to what kombu's text does, else kombu's text.

    Raises what kombu's encoder raises for a value it cannot write.
    """
    return dumps_vouched(value, (value,))


def dumps_vouched(value: Any, unvouched: tuple[Any, ...]) -> bytes | str:
    """:func:`dumps` of a container whose caller vouches for all of it but ``unvouched``.

    A result record is the writer's own dict of str, None and empty lists
    around one user value: checking only that value spares walking the fixed
    fields once per sample. Whatever is not vouched for is checked as
    :func:`dumps` checks it, with the same fallback.
    """
    try:
        if all(_plain(item) for item in unvouched):
            return orjson.dumps(value, default=_default, option=PASSTHROUGH_OPTIONS)
    except (TypeError, RecursionError):  # _Refused, a big int, a non-str key, a lone surrogate, depth
        pass
    return kombu_dumps(value)


def _orjson_reads_it(data: Any) -> bool:
    """Whether orjson decodes ``data`` to what json does: bytes (what Redis gives) without big ints."""
    return type(data) is bytes and _BIG_INT not in data.translate(_DIGITS)


def loads(data: bytes | str) -> Any:
    """A JSON text decoded exactly as kombu's ``loads`` would (``__type__`` envelopes included)."""
    if _orjson_reads_it(data) and _HOOK_MARKER not in data and (b"\\" not in data or _ESCAPED_ASCII not in data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN, infinity, odd encodings: kombu decides
            pass
    return kombu_loads(data)


#: The app setting that turns the fast codec off (``False``: kombu's JSON everywhere, as before).
FAST_JSON_SETTING = "batching_fast_json"
# The content type kombu's JSON serializer registers.
JSON_CONTENT_TYPE = "application/json"


def serves_backend(backend: Any) -> bool:
    """Whether a result backend's records may go through this codec: JSON, accepted, not turned off."""
    accept = getattr(backend, "accept", None)
    return (
        bool(backend.app.conf.get(FAST_JSON_SETTING, True))
        and getattr(backend, "serializer", None) == "json"
        and (accept is None or JSON_CONTENT_TYPE in accept)
    )

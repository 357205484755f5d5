"""The fast JSON codec (celery_batching.fastjson) against kombu's JSON, value by value.

Given a value, when it is encoded by the fast encoder and by kombu's, then both
texts decode (with kombu) to the same thing, or both encoders raise the same
type of error. Given a JSON text, the fast decoders decode it as kombu's
``loads`` and the standard library's ``json.loads`` do, or fail as they do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import fractions
import json
import uuid
from collections import OrderedDict, namedtuple
from typing import Any

import numpy as np
import orjson
import pytest
from kombu.utils.json import dumps as kombu_dumps, loads as kombu_loads

from celery_batching import fastjson


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Word(str):
    pass


class Real(float):
    pass


@dataclasses.dataclass
class Point:
    x: int
    y: int


class WithJson:
    def __json__(self) -> Any:
        return {"made": "by __json__"}


Pair = namedtuple("Pair", "a b")
NAN, INF = float("nan"), float("inf")
NOW = datetime.datetime(2026, 12, 1, 22, 40, 5, 123456, tzinfo=datetime.timezone.utc)
VECTOR = [i / 7 for i in range(384)]

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**40,
    -(10**40),
    0.0,
    -0.0,
    1.5,
    1e16,
    1e-300,
    5e-324,
    1.7976931348623157e308,
    0.1 + 0.2,
    NAN,
    INF,
    -INF,
    "",
    "plain",
    "é ü ß",
    "日本語",
    "emoji 🎉",
    "\x00\x1f control",
    'quote " backslash \\',
    "\ud800 lone surrogate",
    "__type__",
    {"__type__": "uuid", "__value__": {"hex": "0" * 32}},
    [],
    (),
    {},
    [1, 2.5, "x", None, True],
    (1, 2, 3),
    VECTOR,
    [VECTOR, VECTOR],
    [1.0, NAN],
    [1.0, INF, -INF],
    [1e308, 1e308],
    {"a": [1, {"b": (2, [3.5, {"c": None}])}]},
    {"nan": NAN},
    [[[NAN]]],
    {"k": [INF]},
    {1: "int key"},
    {1.5: "float key"},
    {True: "bool key"},
    {None: "none key"},
    {"a": 1, 2: "b"},
    {Word("w"): 1},
    {Colour.RED: 1},
    {(1, 2): "tuple key"},
    NOW,
    NOW.replace(tzinfo=None),
    NOW.date(),
    NOW.time(),
    [NOW],
    {"when": NOW},
    uuid.UUID(int=12345),
    [uuid.UUID(int=1)],
    {"id": uuid.UUID(int=2)},
    decimal.Decimal("1.25"),
    decimal.Decimal("NaN"),
    [decimal.Decimal("2")],
    fractions.Fraction(1, 3),
    [fractions.Fraction(1, 2), 1.0],
    1 + 2j,
    [1j, 2.0],
    b"bytes",
    b"\xff\xfe",
    bytearray(b"x"),
    Colour.RED,
    [Colour.RED],
    Level.HIGH,
    [Level.HIGH, 1],
    Word("sub"),
    [Word("sub")],
    Real(2.5),
    Real("nan"),
    [Real("inf")],
    OrderedDict(a=1),
    Pair(1, 2),
    [Pair(1, NAN)],
    Point(1, 2),
    WithJson(),
    [WithJson()],
    {1, 2},
    frozenset(),
    object(),
    orjson.Fragment(b"[1]"),
    np.float64(1.5),
    np.float64("nan"),
    [np.float64(2.5)],
    np.float32(0.5),
    np.int64(7),
    [np.int64(7), 1],
    np.arange(3),
    np.arange(3.0),
    np.array([[True, False]]),
    np.array([np.nan, 1.0]),
    np.arange(6.0)[::2],  # not contiguous: refused, as kombu refuses it
    {"result": np.arange(4, dtype=np.uint8), "task_id": "x"},
    [np.arange(2.0), np.arange(2.0, dtype=np.float16)],
    np.zeros((2, 2), dtype=np.float32),
    np.bool_(True),
    {
        "status": "SUCCESS",
        "result": VECTOR,
        "traceback": None,
        "children": [],
        "date_done": NOW.isoformat(),
        "task_id": "d3b07384-d113-4ec6-a8e6-1f1f1f1f1f1f",
    },
]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


VALUES += [_nested(200), _nested(300), _nested(5000)]


def _canonical(text: Any) -> str:
    """A text's meaning, comparable: kombu's decode, written back by kombu (NaN writes as NaN)."""
    return kombu_dumps(kombu_loads(text))


def _outcome(encode: Any, value: Any) -> tuple[str, str]:
    try:
        return "ok", _canonical(encode(value))
    except RecursionError:
        return "error", "RecursionError"
    except Exception as exc:  # noqa: BLE001 - the error type is the outcome compared
        return "error", type(exc).__mro__[1].__name__ if isinstance(exc, fastjson._Refused) else type(exc).__name__


def _as_stored(value: Any) -> Any:
    """What a result backend must hold for ``value``: a result row (a numpy array of float64, integers or
    booleans) as its ``tolist()``, as an ordinary task returning that stores it; anything else unchanged."""
    exact = isinstance(value, np.ndarray) and value.flags.c_contiguous
    exact = exact and (value.dtype.kind in "iub" or value.dtype == np.float64)
    if isinstance(value, dict):  # one level down is as deep as the values here hold arrays
        return {key: _as_stored(item) if isinstance(item, np.ndarray) else item for key, item in value.items()}
    if isinstance(value, list):
        return [_as_stored(item) if isinstance(item, np.ndarray) else item for item in value]
    return value.tolist() if exact and np.isfinite(value).all() else value


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_fast_encoder_means_what_kombu_writes(value: Any) -> None:
    # Given a value, when both encoders write it, then kombu reads the same thing (or both refuse).
    assert _outcome(fastjson.dumps, value) == _outcome(kombu_dumps, _as_stored(value))


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_a_record_checked_only_at_its_user_value_means_what_kombu_writes(value: Any) -> None:
    # Given a result record whose writer vouches for all but its result, then the result is still
    # checked as a whole value is: kombu reads what it would have written (or both refuse).
    def record(result: Any) -> dict[str, Any]:
        return {"status": "SUCCESS", "result": result, "traceback": None, "children": [], "task_id": "t"}

    vouched = _outcome(lambda v: fastjson.dumps_vouched(record(v), (v,)), value)
    assert vouched == _outcome(kombu_dumps, record(_as_stored(value)))


def test_plain_vectors_take_the_fast_path() -> None:
    # Given a result record of floats, then orjson writes it (bytes), not kombu (str).
    assert isinstance(fastjson.dumps({"result": VECTOR, "traceback": None}), bytes)
    assert isinstance(fastjson.dumps([1.0, NAN]), str)


def _texts() -> list[Any]:
    texts: list[Any] = []
    for value in VALUES:
        for encode in (kombu_dumps, fastjson.dumps):
            with contextlib.suppress(Exception):  # values no encoder writes have no text to decode
                texts.append(encode(value))
    texts += [
        b"NaN",
        b"[Infinity, -Infinity]",
        b"123456789012345678901234567890",
        b"-9223372036854775809",  # 19 digits, yet below int64: orjson would read a float
        b"[18446744073709551615, 18446744073709551616]",
        b"0.12345678901234567890123",
        b"1e400",
        b'{"a": 1, "a": 2}',
        b'{"__type__": "bytes", "__value__": "x"}',
        b'{"\\u005f_type__": "bytes", "__value__": "x"}',
        b'{"__type__": "nope", "__value__": 1}',
        b'"\\u00e9"',
        b'"\\ud800"',
        b"\xef\xbb\xbf[1]",
        b"\xff",
        b"",
        b"[1,]",
        b"  [1]  ",
        b"01",
        b"-0",
        b"1.0",
        b"1E2",
        b'"\xc3\xa9"',
        "[1, 2]",
        '"é"',
        b"\x00",
        json.dumps("x" * 1000).encode(),
        b"[" * 300 + b"]" * 300,
    ]
    return texts


def _decoded(decode: Any, text: Any) -> tuple[str, str]:
    try:
        value = decode(text)
    except Exception as exc:  # noqa: BLE001 - both decoders must refuse the same texts
        return "error", "ValueError" if isinstance(exc, ValueError) else type(exc).__name__
    return "ok", kombu_dumps(value) + repr(type(value))


@pytest.mark.parametrize("text", _texts(), ids=lambda t: type(t).__name__)
def test_fast_decoder_reads_what_kombu_reads(text: Any) -> None:
    # Given a JSON text, when both decoders read it, then they give the same value (or both fail).
    assert _decoded(fastjson.loads, text) == _decoded(kombu_loads, text)

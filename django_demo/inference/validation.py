"""Request checks of the JSON API, done before any task is sent.

A request is rejected here, with a message that says what to send instead,
so that bad input costs the workers nothing and never reaches a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# What the fill-mask model looks for in a text.
MASK_TOKEN = "[MASK]"


class BadRequest(Exception):
    """Input the API rejects; the message becomes the 400 response."""


@dataclass(frozen=True)
class Limits:
    """How many texts one request may carry, and how long each may be."""

    max_texts: int
    max_chars: int


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise BadRequest('the request body nests too deep to read; send e.g. {"text": "..."}') from None
    except ValueError as exc:  # not JSON, not UTF-8, or a number too long to convert
        raise BadRequest(f'the request body is not valid JSON ({exc}); send e.g. {{"text": "..."}}') from None
    if not isinstance(payload, dict):
        raise BadRequest(f"the request body must be a JSON object, got {_json_type(payload)}")
    return payload


def read_texts(payload: dict[str, Any], limits: Limits) -> tuple[list[str], bool]:
    """The texts of a request and whether it sent a single ``text`` (else a ``texts`` list)."""
    if "text" in payload and "texts" in payload:
        raise BadRequest('send either "text" (one string) or "texts" (a list of strings), not both')
    if "text" in payload:
        return [check_text(payload["text"], '"text"', limits)], True
    if "texts" in payload:
        return read_list(payload["texts"], '"texts"', limits), False
    raise BadRequest('missing field: send "text" (one string) or "texts" (a list of strings)')


def read_query(payload: dict[str, Any], limits: Limits) -> tuple[str, list[str]]:
    """A similarity request: one ``query`` and the ``texts`` to rank against it."""
    if "query" not in payload:
        raise BadRequest('missing field "query": the sentence to compare the texts with')
    if "texts" not in payload:
        raise BadRequest('missing field "texts": a list of sentences to rank by similarity to "query"')
    return check_text(payload["query"], '"query"', limits), read_list(payload["texts"], '"texts"', limits)


def read_list(value: Any, field: str, limits: Limits) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"{field} must be a list of strings, got {_json_type(value)}")
    if not value:
        raise BadRequest(f"{field} is empty; send at least one text")
    if len(value) > limits.max_texts:
        raise BadRequest(f"{field} has {len(value)} texts, more than the limit of {limits.max_texts} per request")
    return [check_text(item, f"{field}[{index}]", limits) for index, item in enumerate(value)]


def check_text(value: Any, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise BadRequest(f"{field} is empty; send at least one word")
    if len(value) > limits.max_chars:
        raise BadRequest(f"{field} has {len(value)} characters, more than the limit of {limits.max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON's \ud800 escapes allow them)
        raise BadRequest(
            f"{field} is not valid Unicode: {exc.object[exc.start]!r} at index {exc.start} is half of a "
            f"surrogate pair; send the character itself, or both halves of its escape"
        ) from None
    return value


def require_mask(texts: list[str], single: bool) -> None:
    """Fill-mask needs a ``[MASK]`` in every text."""
    for index, text in enumerate(texts):
        if MASK_TOKEN not in text:
            field = '"text"' if single else f'"texts"[{index}]'
            raise BadRequest(
                f"{field} has no {MASK_TOKEN}; put {MASK_TOKEN} where the missing word goes, "
                f'e.g. "Paris is the {MASK_TOKEN} of France."'
            )


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"

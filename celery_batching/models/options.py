"""Typed options of the bundled text models, checked when a model is built.

``ManagedModel`` takes free ``**options`` so a task declaration can pass
them through ``model_options``; here they become a frozen dataclass, and an
unknown key or a bad value fails with a :class:`ConfigurationError` that
names the model, the option and the accepted values, long before a worker
loads weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ..errors import ConfigurationError

Options = TypeVar("Options", bound="TextModelOptions")

# Torch dtypes a model may run in, by name; only float32 is accepted on a CPU.
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class TextModelOptions:
    """Options shared by every text model.

    ``max_chars`` bounds a sample before tokenisation; ``max_tokens`` is the
    tokenised length the model sees (longer input is truncated or rejected,
    per model); ``bucket`` splits each batch by length (see
    :mod:`celery_batching.models.bucketing`), ``None`` meaning on for a CPU
    and off for CUDA; ``dtype`` is the weights' dtype.
    """

    max_chars: int = 2000
    max_tokens: int = 512
    bucket: bool | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        require_int("max_chars", self.max_chars, minimum=1)
        require_int("max_tokens", self.max_tokens, minimum=3)
        if self.bucket is not None and not isinstance(self.bucket, bool):
            raise ConfigurationError(f"option bucket must be True, False or None, got {self.bucket!r}")
        if self.dtype not in DTYPES:
            raise ConfigurationError(f"option dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")


def parse_options(schema: type[Options], model_name: str, options: Mapping[str, Any], device: str) -> Options:
    """Build ``schema`` from ``options``, or raise naming what is wrong."""
    known = sorted(f.name for f in fields(schema))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(f"{model_name}: unknown option(s) {unknown}; known options: {known}")
    try:
        parsed = schema(**options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{model_name}: {exc}") from None
    if parsed.dtype != "float32" and not device.startswith("cuda"):
        raise ConfigurationError(
            f"{model_name}: dtype {parsed.dtype!r} needs a CUDA device, the model runs on {device!r}; "
            f"use dtype='float32' on a CPU"
        )
    return parsed


def require_path(name: str, value: object) -> None:
    """Raise unless ``value`` is ``None``, a non-empty str or an ``os.PathLike``."""
    if value is not None and not (isinstance(value, str) and value) and not isinstance(value, os.PathLike):
        raise ConfigurationError(f"option {name} must be a directory path (str), got {value!r}")


def require_int(name: str, value: object, minimum: int) -> None:
    """Raise unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"option {name} must be an int >= {minimum}, got {value!r}")

"""TextModel: what the bundled text models share around their forward pass.

Options parsed when the model is built, per-sample text checks (run by the
worker before batching, so one bad input fails alone with a message saying
what is accepted), and the batch path: tokenise once without padding,
split by length when bucketing is on (see :func:`bucket_by_default`), pad
and run each sub-batch, put outputs back in the caller's order. A subclass
loads its model and implements :meth:`TextModel.forward`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, TypeVar

from ..errors import InvalidSample, ModelLoadError
from .base import ManagedModel
from .bucketing import map_buckets, plan_buckets
from .hf import token_ids
from .options import TextModelOptions, parse_options

Output = TypeVar("Output")


def bucket_by_default(device: str) -> bool:
    """Bucketing pays where padding costs compute and a forward pass little else.

    Measured with MiniLM on mixed-length batches of 64 (``benchmarks/bucketing.py``):
    3.6x the throughput on 2 CPU cores, 0.4x on an H100, where the extra
    forward passes cost more than the padding they save.
    """
    return not device.startswith("cuda")


class TextModel(ManagedModel[str, Output]):
    """A Hugging Face text model whose sample is one str."""

    #: The options dataclass of the subclass.
    options_schema: ClassVar[type[TextModelOptions]] = TextModelOptions

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device, **options)
        self.settings: Any = parse_options(self.options_schema, type(self).__name__, options, device)
        self.bucket: bool = bucket_by_default(device) if self.settings.bucket is None else self.settings.bucket
        self.tokenizer: Any = None
        self.model: Any = None

    def validate(self, sample: Any) -> None:
        name = type(self).__name__
        if not isinstance(sample, str):
            raise InvalidSample(f"{name} takes a str sample, got {type(sample).__name__}")
        if not sample.strip():
            raise InvalidSample(f"{name} got an empty or blank text; send at least one word")
        if len(sample) > self.settings.max_chars:
            raise InvalidSample(
                f"{name} got a text of {len(sample)} characters, more than max_chars={self.settings.max_chars}; "
                f"shorten it or raise the max_chars option"
            )

    def predict(self, batch: list[str]) -> list[Output]:
        if self.model is None:
            raise ModelLoadError(f"{type(self).__name__}: predict() before init_model(); the worker loads it first")
        if not batch:
            return []
        rows = token_ids(self.tokenizer, batch, self.settings.max_tokens)
        buckets = plan_buckets([len(row) for row in rows]) if self.bucket else [list(range(len(rows)))]
        return map_buckets(rows, buckets, self.forward)

    @abstractmethod
    def forward(self, rows: list[list[int]]) -> list[Output]:
        """Run the model on token id rows (unpadded) and return one output per row."""

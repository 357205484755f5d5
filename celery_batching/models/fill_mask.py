"""Fill-mask with any local Hugging Face masked-LM checkpoint.

A sample is a sentence with one or more mask tokens; its output is, per mask
in reading order, the ``top_k`` most likely tokens with their probabilities.
Softmax and top-k run only at the mask positions of the padded batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, InvalidSample, ModelLoadError
from .hf import load_pretrained, pad_rows, token_ids
from .options import TextModelOptions, require_int, require_path
from .text import TextModel

# One prediction: {"token": str, "score": float}, the score a probability.
Candidate = dict[str, Any]

# How to point a worker at a checkpoint, quoted in load errors.
CHECKPOINT_HINT = (
    "set it with model_options={'checkpoint': '/path/to/checkpoint'}: a directory written by save_pretrained() "
    "holding a masked-LM model (e.g. bert-base-uncased) and its tokenizer"
)


@dataclass(frozen=True)
class FillMaskOptions(TextModelOptions):
    """``checkpoint``: the local model directory (required to load).

    ``top_k``: candidates per mask. ``mask_token``: what :meth:`validate`
    looks for before the tokenizer is loaded (a process that validates
    without loading weights); once loaded, the tokenizer's own mask token is used.
    """

    checkpoint: str | os.PathLike[str] | None = None
    top_k: int = 5
    mask_token: str = "[MASK]"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_path("checkpoint", self.checkpoint)
        require_int("top_k", self.top_k, minimum=1)
        if not isinstance(self.mask_token, str) or not self.mask_token:
            raise ConfigurationError(f"option mask_token must be a non-empty str, got {self.mask_token!r}")


class FillMaskModel(TextModel[list[list[Candidate]]]):
    """A sentence with mask tokens in; per mask, top-k ``{"token", "score"}`` out."""

    options_schema = FillMaskOptions

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device, **options)
        self.mask_token: str = self.settings.mask_token

    def init_model(self) -> None:
        name = type(self).__name__
        if not self.settings.checkpoint:
            raise ModelLoadError(f"{name}: no checkpoint given; {CHECKPOINT_HINT}")
        directory = Path(self.settings.checkpoint).expanduser()
        tokenizer, model = load_pretrained(
            name, directory, "AutoModelForMaskedLM", self.device, self.settings.dtype, hint=CHECKPOINT_HINT
        )
        if tokenizer.mask_token is None:
            raise ModelLoadError(f"{name}: the tokenizer in {str(directory)!r} has no mask token; {CHECKPOINT_HINT}")
        self.tokenizer, self.model, self.mask_token = tokenizer, model, tokenizer.mask_token

    def validate(self, sample: Any) -> None:
        super().validate(sample)
        name = type(self).__name__
        if self.mask_token not in sample:
            raise InvalidSample(
                f"{name} got a text without {self.mask_token}; put {self.mask_token} where the word to predict goes"
            )
        if self.tokenizer is not None:
            limit = self.settings.max_tokens
            if len(token_ids(self.tokenizer, [sample], limit + 1)[0]) > limit:
                raise InvalidSample(
                    f"{name} got a text of more than max_tokens={limit} tokens; a mask past that point "
                    f"would be cut off, so shorten the text"
                )

    def warmup_batch(self) -> list[str]:
        return [f"Paris is the {self.mask_token} of France.", f"I {self.mask_token} a letter to my {self.mask_token}."]

    def forward(self, rows: list[list[int]]) -> list[list[list[Candidate]]]:
        """One forward pass; softmax and top-k at the mask positions only."""
        import torch

        input_ids, attention_mask = pad_rows(rows, self.tokenizer.pad_token_id, self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            where = (input_ids == self.tokenizer.mask_token_id).nonzero()
            probs = logits[where[:, 0], where[:, 1]].float().softmax(dim=-1)
            scores, ids = probs.topk(min(self.settings.top_k, probs.shape[-1]), dim=-1)
        outputs: list[list[list[Candidate]]] = [[] for _ in rows]
        for (row, _), row_scores, row_ids in zip(where.tolist(), scores.tolist(), ids.tolist()):
            outputs[row].append(
                [{"token": self.tokenizer.decode([i]), "score": s} for i, s in zip(row_ids, row_scores)]
            )
        return outputs

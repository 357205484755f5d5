"""Hugging Face loading and padding shared by the bundled text models.

torch and transformers are imported inside the functions: a web process
imports a model class to declare its task and must not pay for torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch


def load_pretrained(
    model_name: str, directory: Path, auto_class: str, device: str, dtype: str, hint: str = ""
) -> tuple[Any, Any]:
    """Load a tokenizer and an ``auto_class`` model from a local directory.

    Returns ``(tokenizer, model)``, the model in eval mode on ``device`` in
    ``dtype``. Any failure becomes a :class:`ModelLoadError` naming the
    directory and ending with ``hint`` (how to fix it), so a worker stops
    with a readable reason.
    """
    suffix = f"; {hint}" if hint else ""
    if not directory.is_dir():
        raise ModelLoadError(f"{model_name}: {str(directory)!r} does not exist or is not a directory{suffix}")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"{model_name}: {str(directory)!r} has no config.json, so it is no Hugging Face checkpoint "
            f"(a directory written by save_pretrained()){suffix}"
        )
    try:
        import torch
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = getattr(transformers, auto_class).from_pretrained(str(directory), local_files_only=True)
        model.to(device=torch.device(device), dtype=getattr(torch, dtype))
    except Exception as exc:  # any load failure must stop the worker with the reason
        raise ModelLoadError(
            f"{model_name}: cannot load {auto_class} from {str(directory)!r} onto {device} ({dtype}): "
            f"{type(exc).__name__}: {exc}{suffix}"
        ) from exc
    return tokenizer, model.eval()


def token_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Tokenise without padding (padding is per sub-batch), truncating to ``max_tokens``."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=False)
    return [list(row) for row in encoded["input_ids"]]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id rows to their longest; return ``(input_ids, attention_mask)`` on ``device``."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.tensor([[*row, *[pad_id] * (width - len(row))] for row in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
    return ids.to(device), mask.to(device)

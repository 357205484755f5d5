"""Does length bucketing help MiniLM on mixed-length batches? Measured, same run.

``python -m benchmarks.bucketing [--count 512] [--batch-size 64] [--threads N]``

The same fixed mixed-length sentences, cut into batches of ``--batch-size``,
through :class:`MiniLMEmbedder` with ``bucket=False`` (each batch padded to
its longest sentence) and ``bucket=True`` (each batch split into sub-batches
of similar length). Alternating rounds, the best one counts. Also prints the
padded token slots each way, the work bucketing saves before any timing.
"""

from __future__ import annotations

import argparse
import os

from celery_batching.models.bucketing import plan_buckets

from .minilm_direct import chunks, time_pass
from .mixed_text import mixed_sentences


def padded_slots(lengths: list[int], buckets: list[list[int]]) -> int:
    """Token positions a forward pass computes: each bucket padded to its longest."""
    return sum(len(bucket) * max(lengths[i] for i in bucket) for bucket in buckets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    import torch

    from celery_batching.models.embeddings import MiniLMEmbedder

    torch.set_num_threads(args.threads)
    models = {bucket: MiniLMEmbedder(device=args.device, dtype=args.dtype, bucket=bucket) for bucket in (False, True)}
    for model in models.values():
        model.init_model()
    sentences = mixed_sentences(args.count)
    batches = chunks(sentences, args.batch_size)
    for model in models.values():
        model.predict(batches[0])  # warm-up

    seconds = {bucket: float("inf") for bucket in models}
    for _ in range(args.rounds):
        for bucket, model in models.items():
            seconds[bucket] = min(seconds[bucket], time_pass(lambda m=model: [m.predict(b) for b in batches]))

    tokenizer = models[False].tokenizer
    real = padded = bucketed = sub_batches = 0
    for batch in batches:
        lengths = [len(row) for row in tokenizer(batch)["input_ids"]]
        buckets = plan_buckets(lengths)
        real += sum(lengths)
        padded += padded_slots(lengths, [list(range(len(batch)))])
        bucketed += padded_slots(lengths, buckets)
        sub_batches += len(buckets)

    print(
        f"MiniLM on {args.device} ({args.dtype}), {torch.get_num_threads()} threads; {len(sentences)} mixed-length "
        f"sentences in batches of {args.batch_size}; {real} real tokens"
    )
    print(f"  bucket=False  {len(sentences) / seconds[False]:8.1f} sentences/s  {padded:7d} token slots")
    print(
        f"  bucket=True   {len(sentences) / seconds[True]:8.1f} sentences/s  {bucketed:7d} token slots "
        f"({sub_batches / len(batches):.1f} sub-batches per batch)"
    )
    print(f"  speed-up: {seconds[False] / seconds[True]:.2f}x (best of {args.rounds} rounds each)")


if __name__ == "__main__":
    main()

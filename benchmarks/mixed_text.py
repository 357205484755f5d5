"""A fixed set of English-like sentences of mixed length for the MiniLM benchmarks.

Real traffic mixes short queries with long passages; that mix is what makes
padding cost something. Sentences are drawn from a small word list with a
seeded generator: mostly short (4 to 16 words), a quarter long (40 to 120
words), the same set on every run. Stdlib only.
"""

from __future__ import annotations

import random

# Share of long sentences in the mix.
LONG_SHARE = 0.25
SHORT_WORDS = (4, 16)
LONG_WORDS = (40, 120)

WORDS = (
    "the a queue worker batch request model result server message many small fast slow one each every "
    "sentence token answer question river mountain city train station morning evening coffee window "
    "letter garden market music picture story reader writer engineer doctor teacher student child "
    "runs waits drains sends reads writes finds keeps holds brings builds opens closes moves learns "
    "quickly slowly often never always again together alone early late near far above below before "
    "after because while although and or but with without under over into from through between "
    "green quiet bright heavy light warm cold old new long short busy empty full careful simple"
).split()


def mixed_sentences(count: int = 512, seed: int = 0) -> list[str]:
    """``count`` sentences, the same for the same ``seed``."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        low, high = LONG_WORDS if rng.random() < LONG_SHARE else SHORT_WORDS
        words = rng.choices(WORDS, k=rng.randint(low, high))
        sentences.append(" ".join(words).capitalize() + ".")
    return sentences

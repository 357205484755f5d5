"""Task ids and delivery tags as kombu makes them (random UUID4 text), without a system call each.

kombu's ``uuid()`` asks the kernel for 16 random bytes per id; on a small
virtual machine that call is most of its 6 µs, and a call sends two ids (the
task's and its delivery tag). Here the kernel's randomness is fetched for 256
ids at a time and turned into text at once. A list iterator hands them out:
its ``next`` is one C call, so threads never share an id, and a forked child
drops its parent's unused ids (it would send the same ones).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# Ids made per read of the kernel's randomness.
_BATCH = 256
_VARIANTS = "89ab"  # RFC 4122 variant: the two top bits of the clock_seq byte are 10


def _make(count: int) -> list[str]:
    """``count`` random UUID4 texts, each with the 122 random bits ``uuid.uuid4()`` has."""
    text = os.urandom(16 * count).hex()
    ids = []
    for start in range(0, 32 * count, 32):
        h = text[start : start + 32]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANTS[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}")
    return ids


_pending: Iterator[str] = iter(())


def _forget() -> None:
    global _pending
    _pending = iter(())


os.register_at_fork(after_in_child=_forget)


def new_id() -> str:
    """A random UUID4 text, as kombu's ``uuid()`` gives."""
    global _pending
    for value in _pending:
        return value
    fresh = iter(_make(_BATCH))
    first = next(fresh)
    _pending = fresh
    return first

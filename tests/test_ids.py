"""Ids of the fast path: random UUID4 texts, never repeated across threads or a fork (no server)."""

from __future__ import annotations

import os
import threading
import uuid

from celery_batching.ids import new_id


def test_ids_are_uuid4_texts_with_every_random_bit_used():
    ids = [new_id() for _ in range(2000)]
    parsed = [uuid.UUID(value) for value in ids]
    assert all(str(u) == value for u, value in zip(parsed, ids))  # canonical text
    assert {u.version for u in parsed} == {4} and {u.variant for u in parsed} == {uuid.RFC_4122}
    assert len(set(ids)) == len(ids)
    # each of the 122 random bits takes both values somewhere
    fixed = uuid.UUID(int=(0xF << 76) | (0x3 << 62))
    ones = 0
    for u in parsed:
        ones |= u.int
    zeros = 0
    for u in parsed:
        zeros |= ~u.int & ((1 << 128) - 1)
    assert ones | fixed.int == (1 << 128) - 1 and zeros | fixed.int == (1 << 128) - 1


def test_threads_never_get_the_same_id():
    taken: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def take(into: list[str]) -> None:
        start.wait()
        into.extend(new_id() for _ in range(3000))

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for into in taken for value in into]
    assert len(set(every)) == len(every) == 24000


def test_a_forked_child_does_not_reuse_its_parents_ids():
    new_id()  # the parent holds unused ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert child not in {new_id() for _ in range(300)}

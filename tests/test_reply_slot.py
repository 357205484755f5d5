"""The slot a reply is handed over in: pure threading, no server."""

from __future__ import annotations

import threading

from celery_batching.client.replies import ReplySlot


def test_a_wait_before_the_reply_times_out_empty():
    assert ReplySlot().wait(0.01) is False


def test_the_reply_wakes_a_waiting_thread_and_every_later_wait_returns_at_once():
    # Given a thread waiting on an empty slot
    slot = ReplySlot()
    heard: list[object] = []
    waiter = threading.Thread(target=lambda: heard.append(slot.wait(30) and slot.meta))
    waiter.start()
    # When the listener hands the reply over (twice: a duplicate publish)
    slot.fulfil({"status": "SUCCESS", "result": 1})
    slot.fulfil({"status": "SUCCESS", "result": 1})
    waiter.join(30)
    # Then the waiter woke with it, and waits after it return at once, as often as asked
    assert heard == [{"status": "SUCCESS", "result": 1}]
    assert [slot.wait(0.01) for _ in range(3)] == [True, True, True]

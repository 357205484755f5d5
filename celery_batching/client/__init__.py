"""What a web process imports: declaring batched tasks, sending them, awaiting results.

``task.py`` declares; ``publish.py`` sends plain calls with one LPUSH;
``replies.py`` awaits them on one reply channel per process;
``sent_events.py`` sends ``task-sent`` events in bulk; ``gather.py`` submits
and gathers many; ``aio.py`` awaits results on an event loop;
``directory.py`` knows which workers serve which queue.
"""

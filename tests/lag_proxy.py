"""A TCP relay that delays everything it carries: a replica's link to its master, or a result store, made slow.

On loopback a replica is never more than a few microseconds behind, so a
failover hardly ever drops a write. A real link (another zone, a busy
network) lags; this relay makes that lag ``lag_seconds`` long in each
direction. What is still inside the relay when the master dies is dropped,
as the last writes of a crashed machine that had not reached its replica.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time

# Largest chunk read from one side at a time.
CHUNK_BYTES = 65536


class LagProxy:
    """Listens on a free loopback port; each connection is relayed to ``target_port``, late."""

    def __init__(self, target_port: int, lag_seconds: float) -> None:
        self.target_port = target_port
        self.lag = lag_seconds
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> LagProxy:
        threading.Thread(target=self._accept, name="lag-proxy", daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                continue  # the target is gone: the replica retries, and is refused until the failover
            for source, sink in ((up, down), (down, up)):
                _Leg(source, sink, self.lag).start()

    def close(self) -> None:
        self._listener.close()


class _Leg:
    """One direction: a reader stamps chunks, a sender delivers each once its time comes."""

    def __init__(self, source: socket.socket, sink: socket.socket, lag: float) -> None:
        self.source, self.sink, self.lag = source, sink, lag
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._send, daemon=True).start()

    def _read(self) -> None:
        try:
            while data := self.source.recv(CHUNK_BYTES):
                with self._ready:
                    self._pending.append((time.monotonic() + self.lag, data))
                    self._ready.notify()
        except OSError:
            pass
        with self._ready:
            self._closed = True  # what is still pending is dropped with the dead end
            self._pending.clear()
            self._ready.notify()
        for end in (self.source, self.sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def _send(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                due, data = self._pending[0]
                if due > time.monotonic():
                    self._ready.wait(due - time.monotonic())
                    continue
                self._pending.popleft()
            try:
                self.sink.sendall(data)
            except OSError:
                return

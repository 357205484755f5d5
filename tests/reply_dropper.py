"""A TCP proxy to Redis on loopback that can swallow the reply to a command it forwarded.

What a client sees when its command reached Redis but the answer was lost (a
network hiccup, a server stalled past the client's socket timeout): a timeout
whose outcome is unknown. ``arm(n)`` makes the next ``n`` connections that
send a script call (EVALSHA) forward it and drop everything Redis answers.
"""

from __future__ import annotations

import socket
import threading

from tests.servers import free_port

# What marks the command whose reply is dropped.
SCRIPT_CALL = b"EVALSHA"


class ReplyDropper:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._to_drop = 0
        self.dropped = 0  # connections whose script reply was swallowed
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def arm(self, connections: int) -> None:
        with self._lock:
            self._to_drop = connections

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            dropping = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, dropping), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, dropping), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, dropping: threading.Event) -> None:
        """Client to Redis: everything is forwarded; a script call may arm this connection first."""
        try:
            while chunk := client.recv(65536):
                if SCRIPT_CALL in chunk and not dropping.is_set():
                    with self._lock:
                        if self._to_drop > 0:
                            self._to_drop -= 1
                            self.dropped += 1
                            dropping.set()  # before Redis can answer
                server.sendall(chunk)
        except OSError:
            pass
        finally:
            server.close()
            client.close()

    def _downstream(self, server: socket.socket, client: socket.socket, dropping: threading.Event) -> None:
        """Redis to client: forwarded, unless this connection's replies are being dropped."""
        try:
            while chunk := server.recv(65536):
                if not dropping.is_set():
                    client.sendall(chunk)
        except OSError:
            pass
        finally:
            client.close()
            server.close()

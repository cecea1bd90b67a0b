"""Helpers of the scale-out tests: a tiny TCP proxy and a JSON call over a fresh connection.

TcpProxy: round-robin over backends, one per connection.

In front of several web servers it is the load balancer (an HTTP client that opens a
connection per request sees its requests spread in turn); in front of one backend it is a
forwarder (PostgreSQL and Redis listen on 127.0.0.1 only; worker hosts in other network
namespaces reach them through a proxy on the host's bridge address).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import urllib.error
import urllib.request
from collections import Counter


class TcpProxy:
    """Listen on (host, port); hand each accepted connection to the next backend in turn."""

    def __init__(self, backends: list[tuple[str, int]], host: str = "127.0.0.1", port: int = 0):
        self.backends = list(backends)
        self._next = itertools.cycle(range(len(self.backends)))
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.listen(256)
        self.host, self.port = self._listener.getsockname()[:2]
        self.connections: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"tcpproxy:{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                backend = self.backends[next(self._next)]
                self.connections[backend] += 1
            threading.Thread(target=self._serve, args=(client, backend), daemon=True).start()

    def _serve(self, client: socket.socket, backend: tuple[str, int]) -> None:
        try:
            upstream = socket.create_connection(backend, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed.is_set():  # closed while this connection was being set up: cut it too
                client.close()
                upstream.close()
                return
            self._sockets.update((client, upstream))
        other = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        other.start()
        self._pump(client, upstream)
        other.join()
        for sock in (client, upstream):  # both directions are done
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:  # pass the end of this direction on; the other may still be talking
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        try:
            # shutdown() first: on Linux, close() alone leaves a thread blocked in accept()
            # holding the socket, which goes on accepting new connections.
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(5)


def call_json(base: str, path: str, key: str | None = None, body=None, method: str | None = None):
    """One request on a fresh connection: (status, headers, JSON body)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Api-Key {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read() or b"null")

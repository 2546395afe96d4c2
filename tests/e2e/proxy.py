"""A loopback TCP forwarder a test can open and close, to make PostgreSQL unreachable for a
worker without touching the server every other test shares; or, given `cut_reply_to`, to
lose one reply: the first answer to a request holding those bytes is dropped and the
connection closed, after the server has done the work."""

from __future__ import annotations

import selectors
import socket
import threading


class TcpProxy:
    def __init__(
        self, port: int, target: tuple[str, int], cut_reply_to: bytes | None = None
    ) -> None:
        self.port = port
        self._target = target
        self._cut_reply_to = cut_reply_to
        self.replies_cut = 0
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self) -> None:
        """Start accepting on the port (until now, connections there are refused)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._spawn(self._accept_loop)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self._target, timeout=5)
            self._spawn(self._pump, client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        asked = False  # the client's last request held `cut_reply_to`
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.fileobj is client and self._cut_reply_to is not None:
                        asked = self._cut_reply_to in data
                    elif asked and self.replies_cut == 0 and not data.startswith(b"-NOSCRIPT"):
                        self.replies_cut += 1
                        return  # the reply goes nowhere; both sockets close below
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            client.close()
            upstream.close()

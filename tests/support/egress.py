"""Egress test doubles: a stub resolver (no test host name reaches DNS) and a loopback listener that counts the
connections it is offered, so a test can show a refusal came before any connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StubResolver:
    """Resolves the test's host names to the addresses it is given, and records every question. A name given a
    list of answers (lists) answers the next one each time it is asked, the last one from then on (a name
    rebinding between lookups)."""

    def __init__(self, names: dict[str, list[str] | list[list[str]]]) -> None:
        self.names = names
        self.asked: list[str] = []

    def __call__(self, host: str, port: int | None) -> list[str]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"unknown test host {host}")
        answers = self.names[host]
        if answers and isinstance(answers[0], list):
            times = self.asked.count(host)
            return list(answers[min(times, len(answers)) - 1])
        return [str(a) for a in answers]


class Listener:
    """A TCP listener on 127.0.0.1 that accepts and at once closes every connection, counting them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="egress listener", daemon=True)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()


@contextmanager
def listening() -> Iterator[Listener]:
    """A `Listener` for the duration of the block."""
    listener = Listener()
    listener.thread.start()
    try:
        yield listener
    finally:
        listener.stopped.set()
        listener.thread.join(5)
        listener.sock.close()

"""A redis-server of the tests' own on a free port: the suite's state never mixes with another
run's on the same machine, and a test can stop it without harming anybody else."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis

from cli.ports import free_port
from tests.helpers import wait_for

__all__ = ["RedisServer", "free_port"]


class RedisServer:
    def __init__(self, directory: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._options = options
        self._process: subprocess.Popen[bytes] | None = None

    def db_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, *options: str) -> None:
        """Started with the options given here after those given when made."""
        self._directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self._directory), "--save", "", *self._options, *options,
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_for(answers, timeout=30, message="redis-server did not start")
        finally:
            client.close()

    def pause(self) -> None:
        """Stopped in its tracks (SIGSTOP), its connections open: a machine that froze."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.wait(timeout=30)

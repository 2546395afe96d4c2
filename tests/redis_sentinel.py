"""A Redis master, a replica and three Sentinels of a test's own on loopback: what a team that
outgrew one Redis machine runs, small enough to kill a master in."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.helpers import wait_for
from tests.redis_server import RedisServer, free_port

MASTER_NAME = "crm"


class SentinelCluster:
    def __init__(self, directory: Path, *, down_after_ms: int = 1000) -> None:
        self._directory = directory
        self._down_after_ms = down_after_ms
        self.master = RedisServer(directory / "a")
        self.replica = RedisServer(directory / "b")
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def sentinels(self) -> str:
        """REDIS_SENTINELS for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        self.master.start()
        self.replica.start("--replicaof", "127.0.0.1", str(self.master.port))
        for port in self.sentinel_ports:
            config = self._directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self._directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self._down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            command = ["redis-server", str(config), "--sentinel"]
            self._sentinels.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        wait_for(self._in_sync, timeout=30, message="the replica did not catch up")
        wait_for(self._sentinels_agree, timeout=30, message="the Sentinels did not find both")

    def master_port(self) -> int | None:
        """The port of the master the Sentinels name now, if they agree on one."""
        seen = set()
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                host_port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                seen.add(int(host_port[1]) if host_port else None)
            except redis.RedisError:
                seen.add(None)
            finally:
                client.close()
        return seen.pop() if len(seen) == 1 else None

    def replicas_of_master(self) -> int:
        port = self.master_port()
        if port is None:
            return 0
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            return int(client.info("replication").get("connected_slaves", 0))
        except redis.RedisError:
            return 0
        finally:
            client.close()

    def _in_sync(self) -> bool:
        client = redis.Redis(port=self.replica.port, socket_timeout=1)
        try:
            return client.info("replication").get("master_link_status") == "up"
        finally:
            client.close()

    def _sentinels_agree(self) -> bool:
        if self.master_port() != self.master.port:
            return False
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                state = client.sentinel_master(MASTER_NAME)
                if (
                    int(state.get("num-slaves", 0)) < 1
                    or int(state.get("num-other-sentinels", 0)) < 2
                ):
                    return False
            finally:
                client.close()
        return True

    def kill_master(self) -> tuple[RedisServer, float]:
        """kill -9 the master the Sentinels name now; which server it was, and when."""
        port = self.master_port()
        doomed = self.master if port == self.master.port else self.replica
        doomed.stop(signal.SIGKILL)
        return doomed, time.monotonic()

    def stop(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        self.master.stop(signal.SIGKILL)
        self.replica.stop(signal.SIGKILL)

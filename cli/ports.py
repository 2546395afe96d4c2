"""Who holds a TCP port on this machine: so `crm-run` can say, before it starts anything, that
the receiver's port is taken and by what, instead of failing half-way through start-up."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

_LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def in_use(host: str, port: int) -> bool:
    """Whether binding `host:port` would fail because something listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            # Any other failure (an address not on this machine) is the receiver's to report.
            return exc.errno == errno.EADDRINUSE
    return False


def holder(port: int) -> str | None:
    """The listening process's command line and pid, where /proc tells (Linux, same user or
    root); None where it does not."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == _LISTEN
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            held = any(
                os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
                for fd in os.listdir(f"/proc/{pid}/fd")
            )
            if held:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                return f"{command.decode(errors='replace')[:120]} (pid {pid})"
        except OSError:
            continue
    return None

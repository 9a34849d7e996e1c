"""Loopback ports for the processes tests start, safe under pytest-xdist and side-by-side runs.

Binding port 0 and closing the socket hands out a port that anything may take before the test's
process binds it: another worker doing the same, or any outgoing connection (the kernel picks their
local ports from the same ephemeral range, net.ipv4.ip_local_port_range, 32768-60999 by default).
That happened: a sidecar failed to bind, and the test talked to another test's sidecar on the port.
Ports here come from below the ephemeral range, and each is handed out only to the process that
holds its lock file (xdist workers, and the pytest runs `make test` starts beside each other), for
that process's whole life, so no two processes are ever given the same one."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path

FIRST_PORT, LAST_PORT = 20000, 32000  # below the ephemeral range; the local cluster uses 12379-16443
_LOCKS = Path(tempfile.gettempdir()) / "lease-sidecar-test-ports"
_held: list[int] = []  # lock file descriptors, kept open for the life of this process
# Processes start their search at different places, so they rarely try each other's locks.
_next = FIRST_PORT + os.getpid() % (LAST_PORT - FIRST_PORT)


def _claim(port: int) -> bool:
    _LOCKS.mkdir(exist_ok=True)
    fd = os.open(_LOCKS / f"{port}", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def _bindable(first: int, count: int) -> bool:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for offset, sock in enumerate(sockets):
            sock.bind(("127.0.0.1", first + offset))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


def free_port(count: int = 1) -> int:
    """A port p such that p .. p + count - 1 are free on 127.0.0.1 and handed to no other process."""
    global _next
    for _attempt in range(LAST_PORT - FIRST_PORT):
        first, _next = _next, _next + count
        if _next > LAST_PORT:
            first, _next = FIRST_PORT, FIRST_PORT + count
        if all(_claim(first + offset) for offset in range(count)) and _bindable(first, count):
            return first
    raise AssertionError(f"no {count} free consecutive ports in {FIRST_PORT}-{LAST_PORT}")

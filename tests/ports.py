"""Loopback ports for the processes tests start, safe under pytest-xdist.

Binding port 0 and closing the socket hands out a port that anything may take before the test's
process binds it: another worker doing the same, or any outgoing connection (the kernel picks their
local ports from the same ephemeral range, net.ipv4.ip_local_port_range, 32768-60999 by default).
That happened: a sidecar failed to bind, and the test talked to another test's sidecar on the port.
Ports here come from below the ephemeral range, from a slice of their own per xdist worker, and are
never handed out twice by one process until its slice wraps around."""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import tempfile
from pathlib import Path

FIRST_PORT, LAST_PORT = 20000, 32000  # below the ephemeral range; the local cluster uses 12379-16443
_SLICE = 1000  # ports per worker: gw0 gets 20000-20999, gw1 21000-21999, ...


def _worker_index() -> int:
    """gwN: N. Not an xdist worker: one of slices 8-11 by process id, apart from the workers, for the
    pytest runs `make test` starts beside them (the election tests on other Pythons)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    if name.startswith("gw") and name[2:].isdigit():
        return int(name[2:])
    return 8 + os.getpid() % 4


_START = FIRST_PORT + (_worker_index() * _SLICE) % (LAST_PORT - FIRST_PORT)
_next = itertools.cycle(range(_START, _START + _SLICE))


_LOCKS = Path(tempfile.gettempdir()) / "lease-sidecar-test-ports"
_held: list[int] = []  # lock file descriptors, kept open for the life of this process


def _claim(port: int) -> bool:
    """Pytest runs side by side (`make test` runs the unit tests on three interpreters at once) may
    share a slice: a port is handed out only to the process holding its lock file."""
    _LOCKS.mkdir(exist_ok=True)
    fd = os.open(_LOCKS / f"{port}", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def free_port(count: int = 1) -> int:
    """A port p such that p .. p + count - 1 are free on 127.0.0.1 right now."""
    for _attempt in range(_SLICE):
        first = next(_next)
        if first + count > _START + _SLICE or not all(_claim(first + offset) for offset in range(count)):
            continue
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no {count} free consecutive ports in {_START}-{_START + _SLICE - 1}")

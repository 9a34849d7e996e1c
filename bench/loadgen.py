"""Loopback HTTP/1.1 load for the lease-sidecar benchmarks, run by bench/run.py as its own process.

Modes (each prints one JSON line when done; every loop is bounded in count and time):

* `openloop URL --rate R --duration D`: requests released at fixed times whatever the replies do;
  latency runs from the release to the kernel's receipt of the end of the reply (SO_TIMESTAMPNS),
  so waiting for a free connection behind slow replies counts (no coordinated omission), but the
  time the reply then waits for this process to be scheduled does not: that is the generator's,
  and is reported apart (`read_*`: release to having read the reply). Nor is it timed from the
  ideal schedule: asyncio timers fire up to about a millisecond late, which is also the
  generator's (`release_lag_*`). Percentiles in milliseconds.
* `closed URL --connections C --duration D`: as fast as replies come (the fallback when `wrk` is
  missing). Prints requests/s.
* `waiters URL --count N --hold S`: opens N keep-alive connections, sends one long-poll GET on
  each, prints `{"ready": n}` once all are sent, then holds them until stdin closes or S seconds
  pass. Prints how many were answered early.

Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import math
import resource
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 5.0


def loopback_target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing non-loopback target {host!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, parts.port or 80, path


def request_bytes(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n".encode()


def parse_head(head: bytes) -> tuple[int, int]:
    """(status, Content-Length) of a reply's head (status line and headers)."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(head[9:12]), length


async def read_reply(reader: asyncio.StreamReader) -> int:
    status, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if length:
        await reader.readexactly(length)
    return status


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


SO_TIMESTAMPNS = 35
"""Linux's socket option (asm-generic and x86 alike; Python does not name it): every received packet
carries the kernel's receive time, CLOCK_REALTIME, as a timespec of two 64-bit fields."""
_TIMESPEC = struct.Struct("qq")


class StampedConnection:
    """One keep-alive HTTP/1.1 connection that knows when the kernel received each reply.

    The time a reply waits in the socket for this process to be scheduled and read it is the load
    generator's, not the server's; the kernel's receive time leaves it out. Without the option
    (not Linux) `received_ns` is None and only the read time is known."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, stamped: bool) -> None:
        self.loop, self.sock, self.stamped = loop, sock, stamped

    @classmethod
    async def open(cls, host: str, port: int) -> StampedConnection:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            stamped = sys.platform == "linux"
        except OSError:
            stamped = False
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_TIMEOUT_S)
        except BaseException:
            sock.close()
            raise
        return cls(loop, sock, stamped)

    async def exchange(self, request: bytes) -> tuple[int, int | None]:
        """Send `request`, read one whole reply: (status, kernel receive time of its last part in ns)."""
        await self.loop.sock_sendall(self.sock, request)
        buffer = b""
        received_ns = None
        while True:
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(65536, socket.CMSG_SPACE(_TIMESPEC.size))
            except BlockingIOError:
                await self._readable()
                continue
            if not data:
                raise ConnectionError("the server closed the connection")
            for level, kind, payload in ancillary:
                if self.stamped and level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS \
                        and len(payload) >= _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
                    received_ns = seconds * 1_000_000_000 + nanoseconds
            buffer += data
            status = complete_reply(buffer)
            if status is not None:
                return status, received_ns

    async def _readable(self) -> None:
        future = self.loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        self.loop.add_reader(fd, ready)
        try:
            await future
        finally:
            self.loop.remove_reader(fd)

    def close(self) -> None:
        self.sock.close()


def complete_reply(buffer: bytes) -> int | None:
    """The status of the reply in `buffer` once all of it (head and Content-Length body) is there."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    status, length = parse_head(buffer[:end])
    return status if len(buffer) >= end + 4 + length else None


async def openloop(host: str, port: int, path: str, rate: float, duration: float, connections: int) -> dict:
    loop = asyncio.get_running_loop()
    request = request_bytes(host, path)
    queue: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()
    latencies: list[float] = []
    """Release to the kernel's receipt of the reply: the server's part (and the kernel's)."""
    latencies_read: list[float] = []
    """Release to this process having read the reply: also its own wake-up delays."""
    stamped: list[float] = []
    """The latencies timed by the kernel's receipt (the rest fall back to the read time)."""
    lags: list[float] = []
    errors = 0
    total = int(rate * duration)
    start = loop.time() + 0.2
    cpu_before_ns, waited_before_ns = schedstat_ns()
    gc.collect()
    gc.disable()  # a collection here would hold every reply waiting to be read (10 s: memory is no issue)

    async def dispatch() -> None:
        for i in range(total):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            released = loop.time()
            lags.append(released - due)
            queue.put_nowait((released, time.time_ns()))
        for _ in range(connections):
            queue.put_nowait(None)

    async def worker() -> None:
        nonlocal errors
        connection = await StampedConnection.open(host, port)
        try:
            while (released := await queue.get()) is not None:
                released_mono, released_wall_ns = released
                try:
                    status, received_ns = await connection.exchange(request)
                except (OSError, ValueError):
                    errors += 1
                    connection.close()
                    connection = await StampedConnection.open(host, port)
                    continue
                if status != 200:
                    errors += 1
                read = loop.time() - released_mono
                latencies_read.append(read)
                if received_ns is None:
                    latencies.append(read)
                else:
                    stamped.append(max(0.0, (received_ns - released_wall_ns) / 1e9))
                    latencies.append(stamped[-1])
        finally:
            connection.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    dispatcher = asyncio.create_task(dispatch())
    finished_in_time = True
    try:
        await asyncio.wait_for(asyncio.gather(dispatcher, *tasks), duration + 30)
    except TimeoutError:
        finished_in_time = False
    finally:
        gc.enable()
    elapsed = loop.time() - start
    cpu_after_ns, waited_after_ns = schedstat_ns()
    ms = sorted(value * 1000 for value in latencies)
    read_ms = sorted(value * 1000 for value in latencies_read)
    lag_ms = sorted(value * 1000 for value in lags)
    return {"mode": "openloop", "rate": rate, "duration_s": duration, "scheduled": total,
            "completed": len(latencies), "errors": errors, "finished_in_time": finished_in_time,
            "achieved_rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
            "timing": "kernel receive (SO_TIMESTAMPNS)" if len(stamped) == len(latencies) else
                      f"kernel receive for {len(stamped)} of {len(latencies)}, read time for the rest",
            "p50_ms": percentile(ms, 0.50), "p90_ms": percentile(ms, 0.90), "p99_ms": percentile(ms, 0.99),
            "p999_ms": percentile(ms, 0.999), "max_ms": ms[-1] if ms else None,
            "read_p50_ms": percentile(read_ms, 0.50), "read_p99_ms": percentile(read_ms, 0.99),
            "read_max_ms": read_ms[-1] if read_ms else None,
            "release_lag_p50_ms": percentile(lag_ms, 0.5), "release_lag_p99_ms": percentile(lag_ms, 0.99),
            "runqueue_wait_ms": round((waited_after_ns - waited_before_ns) / 1e6, 1),
            "cpu_ms": round((cpu_after_ns - cpu_before_ns) / 1e6, 1)}


def schedstat_ns() -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of this process (Linux schedstat). The wait is
    the part of its measured latencies that is the machine's other load, not the server."""
    try:
        with open("/proc/self/schedstat") as stat:
            cpu_ns, wait_ns = stat.read().split()[:2]
            return int(cpu_ns), int(wait_ns)
    except (OSError, ValueError):
        return 0, 0


async def closed(host: str, port: int, path: str, connections: int, duration: float) -> dict:
    loop = asyncio.get_running_loop()
    request = request_bytes(host, path)
    done = 0
    errors = 0
    stop_at = loop.time() + duration

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        try:
            while loop.time() < stop_at:
                writer.write(request)
                if await read_reply(reader) == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            writer.close()

    started = loop.time()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(connections))), duration + 30)
    elapsed = loop.time() - started
    return {"mode": "closed", "connections": connections, "completed": done, "errors": errors,
            "rps": round(done / elapsed, 1)}


async def waiters(host: str, port: int, path: str, count: int, hold: float) -> dict:
    loop = asyncio.get_running_loop()
    request = request_bytes(host, path)
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0
    for batch_start in range(0, count, 100):  # batches: the server's accept backlog is finite
        batch = min(100, count - batch_start)
        results = await asyncio.gather(*(asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
                                         for _ in range(batch)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                failed += 1
                continue
            reader, writer = result
            writer.write(request)
            streams.append((reader, writer))
        await asyncio.sleep(0.02)
    await asyncio.gather(*(writer.drain() for _, writer in streams), return_exceptions=True)
    print(json.dumps({"ready": len(streams), "failed": failed}), flush=True)

    answered = 0

    async def listen(reader: asyncio.StreamReader) -> None:
        nonlocal answered
        try:
            await read_reply(reader)
            answered += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass

    listeners = [asyncio.create_task(listen(reader)) for reader, _ in streams]
    stdin_closed = asyncio.Event()

    def on_stdin() -> None:
        if not sys.stdin.buffer.raw.read(4096):  # EOF: the harness is done with us
            loop.remove_reader(sys.stdin.fileno())
            stdin_closed.set()

    try:
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    except (OSError, ValueError):  # not a pipe (a file, /dev/null): hold for the full time
        pass
    try:
        await asyncio.wait_for(stdin_closed.wait(), hold)
    except TimeoutError:
        pass
    early = answered
    for task in listeners:
        task.cancel()
    for _, writer in streams:
        writer.close()
    await asyncio.gather(*listeners, return_exceptions=True)
    return {"mode": "waiters", "opened": len(streams), "failed": failed, "answered_early": early}


def main() -> None:
    parser = argparse.ArgumentParser(description="loopback HTTP load")
    parser.add_argument("mode", choices=("openloop", "closed", "waiters"))
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=30.0)
    args = parser.parse_args()
    host, port, path = loopback_target(args.url)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    if args.mode == "openloop":
        result = asyncio.run(openloop(host, port, path, args.rate, min(args.duration, 120), args.connections))
    elif args.mode == "closed":
        result = asyncio.run(closed(host, port, path, args.connections, min(args.duration, 120)))
    else:
        result = asyncio.run(waiters(host, port, path, min(args.count, hard - 100), min(args.hold, 300)))
    result["wall_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""The only path between the machine's own network namespace and the node's: a relay process.

It runs in the machine's namespace and opens sockets inside the node's namespace (setns on
one thread, socket(), setns back: a socket stays in the namespace it was created in), so the
machine's namespace never holds a node address and never sends a packet to one:

  --forward LISTEN=UPSTREAM   listen on LISTEN (host:port) inside the node namespace and relay
                              each connection to UPSTREAM (host:port) in the machine's namespace.
                              Used for the apiserver: 0.0.0.0:16443 in the node namespace ->
                              127.0.0.1:16443 here, so kubelet, kube-proxy and pods (through the
                              `kubernetes` Service) reach it.
  --connect-proxy PATH        an HTTP CONNECT proxy on the unix socket PATH (a file, so it is the
                              same in both namespaces) that dials its targets inside the node
                              namespace. The apiserver's egress selector sends its "cluster"
                              traffic (kubelet logs/exec, pod and service proxy) through it.

Stdlib only; run by `localcluster`/`node.py` as `python3 nsforward.py --netns PIN ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
CONNECT_HEAD_LIMIT_BYTES = 8192
DIAL_TIMEOUT_S = 10.0
CHUNK_BYTES = 65536


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Namespaces:
    """Creates sockets in the node's network namespace from a process living in the machine's."""

    def __init__(self, netns_path: str) -> None:
        self.node_fd = os.open(netns_path, os.O_RDONLY)
        self.home_fd = os.open("/proc/self/ns/net", os.O_RDONLY)

    def node_socket(self, family: int = socket.AF_INET) -> socket.socket:
        _setns(self.node_fd)
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            _setns(self.home_fd)


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _dial_in_node(ns: Namespaces, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = ns.node_socket(family)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), DIAL_TIMEOUT_S)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def serve_forward(ns: Namespaces, listen: str, upstream: str) -> asyncio.Server:
    host, port = _split(listen)
    up_host, up_port = _split(upstream)
    sock = ns.node_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            far = await asyncio.wait_for(asyncio.open_connection(up_host, up_port), DIAL_TIMEOUT_S)
        except (OSError, TimeoutError):
            writer.close()
            return
        await _splice((reader, writer), far)

    return await asyncio.start_server(relay, sock=sock)


async def serve_connect_proxy(ns: Namespaces, path: str) -> asyncio.Server:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        try:
            far = await _dial_in_node(ns, *_split(target))
        except (OSError, TimeoutError, ValueError) as error:
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nX-Error: {error}\r\n\r\n".encode())
            writer.close()
            return
        # Nothing may follow the status line's blank line: the apiserver rejects buffered bytes.
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await _splice((reader, writer), far)

    server = await asyncio.start_unix_server(tunnel, path=path, limit=CONNECT_HEAD_LIMIT_BYTES)
    os.chmod(path, 0o600)
    return server


async def run(args: argparse.Namespace) -> None:
    ns = Namespaces(args.netns)
    servers = [await serve_forward(ns, *spec.split("=", 1)) for spec in args.forward]
    if args.connect_proxy:
        servers.append(await serve_connect_proxy(ns, args.connect_proxy))
    print("nsforward: ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", required=True, help="path of the node's network namespace pin")
    parser.add_argument("--forward", action="append", default=[], metavar="LISTEN=UPSTREAM")
    parser.add_argument("--connect-proxy", metavar="PATH")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

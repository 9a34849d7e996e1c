"""A TCP proxy in front of the apiserver that can black-hole traffic, for tests that cut one
sidecar off while everyone else still reaches the API.

TLS passes through untouched (the sidecar's kubeconfig names https://127.0.0.1:<proxy port>, which
the serving certificate covers). `cut()` stops bytes in both directions while every connection
stays open, new ones included: no RST, no FIN, as when a network path silently fails. The bytes
are held, not dropped, and flow again after `heal()`, as TCP would retransmit them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import localcluster

_CHUNK = 65536


class BlackHoleProxy:
    def __init__(self, upstream_port: int = localcluster.APISERVER_PORT) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackhole-proxy", daemon=True)
        self._open: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self.kubeconfig_path: Path | None = None

    def start(self) -> int:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self.port

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_open(False), self._loop).result(5)

    def heal(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_open(True), self._loop).result(5)

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def kubeconfig(self, admin: Path, path: Path) -> Path:
        """A copy of `admin` that reaches the apiserver through this proxy (also kept as
        `kubeconfig_path`)."""
        config = json.loads(admin.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        self.kubeconfig_path = path
        return path

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """No bytes pass while inside, as if the apiserver behind were frozen."""
        self.cut()
        try:
            yield
        finally:
            self.heal()

    # ------------------------------------------------------------------ in the proxy's loop

    async def _serve(self) -> int:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _set_open(self, flowing: bool) -> None:
        assert self._open is not None
        self._open.set() if flowing else self._open.clear()

    async def _shut(self) -> None:
        assert self._server is not None and self._open is not None
        self._server.close()
        self._open.set()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        try:
            await self._open.wait()  # while cut, not even the connection reaches the server
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except (OSError, asyncio.CancelledError):
            client_writer.close()
            return
        pipes = [asyncio.create_task(self._pipe(client_reader, upstream_writer)),
                 asyncio.create_task(self._pipe(upstream_reader, client_writer))]
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for pipe in pipes:
                pipe.cancel()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        try:
            while data := await reader.read(_CHUNK):
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass  # either side went away, or the proxy is closing
        finally:
            writer.close()

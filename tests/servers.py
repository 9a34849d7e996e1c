"""Real PostgreSQL and Redis servers for the tests, from Debian packages (`postgresql`, `redis-server`).

Each pytest process (each pytest-xdist worker) starts its own: a fresh PostgreSQL cluster in a
temporary folder, initialised and run as the `postgres` user (PostgreSQL refuses to run as root),
listening on 127.0.0.1 at a port from tests/ports.py and on a unix socket in that folder; and a
Redis with no persistence on 127.0.0.1. Neither depends on a cluster the Debian package may have
created and started on 5432. A server that cannot start raises ServerError: the fixtures turn that
into a failure, never a skip.

Also runnable by hand: `python -m tests.servers` starts both, prints their addresses and waits.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

POSTGRES_USER = "postgres"  # the OS user the server runs as, and the database superuser
START_TIMEOUT_S = 60.0
_apt_updated = False


class ServerError(RuntimeError):
    pass


def _run(*argv: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def _apt_install(*packages: str) -> None:
    """Installs Debian packages (the tests run as root, like the project's CI)."""
    global _apt_updated
    if os.geteuid() != 0:
        raise ServerError(f"{' '.join(packages)} missing and not root: apt-get install -y {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=False)
        _apt_updated = True
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise ServerError(f"apt-get install {' '.join(packages)} failed: {done.stderr.strip()[-400:]}")


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin, installing the `postgresql` package if missing."""
    def newest() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        return Path(found[-1]).parent if found else None

    bin_dir = newest()
    if bin_dir is None:
        _apt_install("postgresql")
        bin_dir = newest()
    if bin_dir is None:
        raise ServerError("postgresql installed but no /usr/lib/postgresql/*/bin/initdb")
    return bin_dir


def redis_server_path() -> str:
    path = shutil.which("redis-server")
    if path is None:
        _apt_install("redis-server")
        path = shutil.which("redis-server")
    if path is None:
        raise ServerError("redis-server installed but not on PATH")
    return path


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{name} exited with {process.returncode}: {log.read_text(errors='replace')[-800:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g}s")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass
class Postgres:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def dsn(self) -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)  # "fast" shutdown: roll back open transactions, exit
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> Postgres:
    bin_dir = postgres_bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="lease-sidecar-pg-"))
    data, log = folder / "data", folder / "postgres.log"
    shutil.chown(folder, POSTGRES_USER, POSTGRES_USER)
    as_postgres = ("runuser", "-u", POSTGRES_USER, "--") if os.geteuid() == 0 else ()
    init = _run(*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", POSTGRES_USER, "-A", "trust",
                "-E", "UTF8", "--no-sync", "--locale=C.UTF-8")
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise ServerError(f"initdb failed: {(init.stderr or init.stdout).strip()[-800:]}")
    port = free_port()
    # fsync off: the data dies with the test session anyway, and the machine's disk is shared.
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
             "-k", str(folder), "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Postgres(port, folder, process)
    try:
        _wait_for_port(port, process, log, "postgres")
        _wait_until_accepting(bin_dir, port, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_accepting(bin_dir: Path, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """The port opens before recovery ends ("the database system is starting up"): ask pg_isready."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"postgres exited with {process.returncode}: {log.read_text(errors='replace')[-800:]}")
        if _run(str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER,
                timeout_s=10).returncode == 0:
            return
        time.sleep(0.1)
    raise ServerError(f"postgres on 127.0.0.1:{port} not accepting connections within {START_TIMEOUT_S:g}s")


@dataclass
class Redis:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_redis() -> Redis:
    path = redis_server_path()
    folder = Path(tempfile.mkdtemp(prefix="lease-sidecar-redis-"))
    port = free_port()
    log = folder / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [path, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Redis(port, folder, process)
    try:
        _wait_for_port(port, process, log, "redis-server")
    except BaseException:
        server.stop()
        raise
    return server


if __name__ == "__main__":
    pg, rd = start_postgres(), start_redis()
    print(f"postgres: {pg.dsn}\nredis: {rd.url}\n(Ctrl-C stops both)", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        pg.stop()
        rd.stop()

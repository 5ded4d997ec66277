"""Real PostgreSQL and Redis servers (Debian packages) on free loopback ports.

A test that needs one and cannot start it fails loudly: `scripts/install.sh --test`
installs the packages, so a missing binary is a broken set-up, never a reason to skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.support.live_server import free_port


def _find(pattern: str, name: str) -> str:
    found = sorted(glob.glob(pattern)) or ([shutil.which(name)] if shutil.which(name) else [])
    if not found:
        raise RuntimeError(f"{name} not found: run `bash scripts/install.sh --test`")
    return str(found[-1])


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root; Debian's package creates `postgres`."""
    if os.geteuid() != 0:
        return []
    pwd.getpwnam("postgres")
    return ["runuser", "-u", "postgres", "--"]


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if the process does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until(check: callable, what: str, timeout_s: float = 30.0) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready in {timeout_s} s")
        time.sleep(0.1)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields `postgresql://postgres@127.0.0.1:PORT/crm` for a throwaway cluster.

    The cluster lives in its own temporary directory, not pytest's (mode 0700, owned by
    root), because the server runs as the `postgres` user when tests run as root.
    """
    import psycopg

    initdb = _find("/usr/lib/postgresql/*/bin/initdb", "initdb")
    postgres = str(Path(initdb).parent / "postgres")
    prefix = _as_postgres_user()
    base_dir = Path(tempfile.mkdtemp(prefix="crm-test-pg-"))
    data = base_dir / "pgdata"
    data.mkdir()
    sockets = base_dir / "pgsock"
    sockets.mkdir()
    if prefix:
        for path in (base_dir, data, sockets):
            shutil.chown(path, "postgres")
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    port = free_port()
    log = open(base_dir / "postgres.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [*prefix, postgres, "-D", str(data), "-p", str(port), "-k", str(sockets),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        _wait_until(lambda: psycopg.connect(admin, connect_timeout=1).close() is None, "PostgreSQL")
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute("CREATE DATABASE crm")
        yield f"postgresql://postgres@127.0.0.1:{port}/crm"
    finally:
        # A fast shutdown: SIGTERM is PostgreSQL's smart one, which waits for every client
        # to leave, and a service under test keeps its pooled connections open.
        with suppress(subprocess.TimeoutExpired):  # then stop() below kills it
            subprocess.run([*prefix, str(Path(initdb).parent / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        stop(process)
        log.close()
        shutil.rmtree(base_dir, ignore_errors=True)


class RedisServer:
    """A private redis-server without persistence that can be stopped and started again
    on the same port, as in an outage."""

    def __init__(self, base_dir: Path) -> None:
        self.binary = _find("/usr/bin/redis-server", "redis-server")
        self.port = free_port()
        self.base_dir = base_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.base_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_until(lambda: redis.Redis.from_url(self.url).ping(), "Redis")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@contextmanager
def redis_server(base_dir: Path) -> Iterator[str]:
    """Yields `redis://127.0.0.1:PORT/0` for a private redis-server without persistence."""
    server = RedisServer(base_dir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()

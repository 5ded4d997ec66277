"""Service replicas as real `uvicorn app.server:app` processes, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.live_server import free_port
from tests.support.servers import stop

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def replica(env: dict[str, str], log_path: Path, *, startup_timeout_s: float = 60.0) -> Iterator[str]:
    with replica_process(env, log_path, startup_timeout_s=startup_timeout_s) as (url, _):
        yield url


@contextmanager
def replica_process(
    env: dict[str, str], log_path: Path, *, startup_timeout_s: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("AUTH_", "APP_", "REDIS_", "DATABASE_", "LLM_", "OPENAI_", "DATA_DIR"))}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            # As scripts/run.sh runs it: the guarded HTTP and lean WebSocket protocols, no compression.
            [sys.executable, "-m", "uvicorn", "app.server:app", "--host", "127.0.0.1", "--port", str(port),
             "--http", "app.api.http_protocol:GuardedHttpToolsProtocol",
             "--ws", "app.api.ws_protocol:LeanWebSocketsProtocol", "--ws-per-message-deflate", "false",
             "--ws-max-size", "1048576"],
            env={**clean, **env}, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_timeout_s
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"replica exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield url, process
        finally:
            stop(process)

"""Jobs the analysis pool's tests run in its worker processes. A worker imports the
module of every function it is handed; this one imports nothing heavy, so a worker's
first job starts at once (from the test module, it imported FastAPI and LangServe first,
and both workers were still importing when a test's flood began)."""

from __future__ import annotations

import time
from pathlib import Path


def busy(seconds: float) -> str:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return "done"


def started_at(seconds: float) -> float:
    began = time.time()
    busy(seconds)
    return began


def touch(path: str) -> str:
    Path(path).touch()
    return "touched"

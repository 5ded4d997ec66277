"""The architecture the code promises: layers that only point down, imports without effects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_imports_only_point_down_the_layers() -> None:
    """api -> core -> store | realtime -> chains (contract in pyproject.toml)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_importing_the_server_writes_nothing(tmp_path: Path) -> None:
    """Tools and tests import `app.server` freely: secrets, folders and databases are
    made in the lifespan or on first use, not at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "APP_ENV", "DATABASE_", "REDIS_"))}
    env.update(DATA_DIR=str(tmp_path / "var"), PYTHONPATH=str(PROJECT_ROOT))
    work = tmp_path / "cwd"
    work.mkdir()
    subprocess.run([sys.executable, "-c", "import app.server"], cwd=work, env=env, check=True)
    assert list(tmp_path.rglob("*")) == [work]


def test_the_collector_is_tuned_once_per_process_not_per_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from app.core.runtime import GC_THRESHOLDS
    from app.server import create_app
    from tests.conftest import make_settings
    from tests.support.live_server import live_server

    freezes: list[None] = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(None) or real_freeze())
    for name in ("a", "b", "c"):
        with live_server(create_app(make_settings(tmp_path / name))):
            pass
    assert len(freezes) <= 1, "one freeze per process, whatever the number of apps"
    assert gc.get_threshold() == GC_THRESHOLDS

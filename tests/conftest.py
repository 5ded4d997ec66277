"""Shared fixtures: real servers on loopback, tokens, and settings that ignore the host's env."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.server import create_app
from tests.support.fake_openai import FakeOpenAI
from tests.support.live_server import live_server
from tests.support.servers import postgres_server

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
# Replicas share a master key as they share the JWT secret (a generated one is per data dir).
TEST_DATA_KEY = "test-data-encryption-key-long-enough-0123456789"
# One cache of trained local models for every app and replica of the test session:
# trained once (seconds), then read.
MODEL_CACHE = Path(tempfile.gettempdir()) / "crm-test-model-cache"
os.environ.setdefault("MODEL_CACHE_DIR", str(MODEL_CACHE))


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "data_dir": data_dir,
        "auth_jwt_secret": TEST_SECRET,
        "data_encryption_key": TEST_DATA_KEY,
        "llm_providers": "local",
        "model_cache_dir": MODEL_CACHE,
        # Tests reuse a few identities for hundreds of requests; rate limits have their own tests.
        "rate_limit_tenant": "100000/minute",
        "rate_limit_user": "100000/minute",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each module that asks runs once on SQLite (None: the embedded default) and once on
    a throwaway real PostgreSQL (its URL)."""
    if request.param == "sqlite":
        yield None
    else:
        with postgres_server() as url:
            yield url


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with live_server(fake.app()) as url:
        yield fake, f"{url}/v1"


@pytest.fixture
def openai_provider(fake_openai: tuple[FakeOpenAI, str]) -> Iterator[FakeOpenAI]:
    """The shared fake provider, healthy and with no recorded requests at the start."""
    fake, _ = fake_openai

    def reset() -> None:
        fresh = FakeOpenAI()
        fake.mode, fake.token_delay_s, fake.requests[:], fake.streams_abandoned = "ok", 0.0, [], 0
        fake.request_times[:] = []
        fake.reply, fake.retry_after, fake.rate_limited_requests = fresh.reply, fresh.retry_after, fresh.rate_limited_requests
        fake.json_reply, fake.resume, fake.split_astral = fresh.json_reply, fresh.resume, fresh.split_astral
        fake.burst = fresh.burst

    reset()
    yield fake
    reset()


@pytest.fixture(scope="module")
def service_settings(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: tuple[FakeOpenAI, str]
) -> Settings:
    """The full service with the real OpenAI client pointed at the fake, then `local`."""
    _, openai_url = fake_openai
    return make_settings(
        tmp_path_factory.mktemp("service"),
        llm_providers="openai,local",
        openai_base_url=openai_url,
        openai_api_key="sk-test",
        openai_model="fake-gpt",
        llm_max_retries=1,
        llm_first_token_timeout_s=2.0,
        llm_idle_timeout_s=2.0,
        scoring_tenant_models="acme=logreg-v1",
    )


@pytest.fixture(scope="module")
def service_url(service_settings: Settings) -> Iterator[str]:
    with live_server(create_app(service_settings)) as url:
        yield url


@pytest.fixture(scope="module")
def mint(service_settings: Settings) -> Callable[..., str]:
    verifier = TokenVerifier(service_settings)

    def _mint(tenant: str = "acme", user: str = "alice", roles: tuple[str, ...] = ("rep",),
              ttl_s: int = 600) -> str:
        return verifier.mint(tenant_id=tenant, user_id=user, roles=roles, ttl_s=ttl_s)

    return _mint


@pytest.fixture
def client(service_url: str, mint: Callable[..., str]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {mint()}"}
    with httpx.Client(base_url=service_url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
def anonymous(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=30) as c:
        yield c


EngineEvents = Callable[[AsyncEngine, str, Callable[..., Any]], None]


@pytest.fixture
def engine_events() -> Iterator[EngineEvents]:
    """`listen(engine, name, listener)`: `listener` for the event `name` of every
    connection to `engine`'s database, the engine's own pool and the event loop's
    connections alike (`app.store.database_work`). Removed after the test."""
    registered: list[tuple[str, Callable[..., Any]]] = []

    def listen(engine: AsyncEngine, name: str, listener: Callable[..., Any]) -> None:
        database = engine.url.database

        def on_database(connection: Any, *args: Any) -> Any:
            if connection.engine.url.database == database:
                return listener(connection, *args)
            return None

        event.listen(Engine, name, on_database)
        registered.append((name, on_database))

    yield listen
    for name, listener in registered:
        event.remove(Engine, name, listener)

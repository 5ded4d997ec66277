"""Python `RemoteRunnable` clients with a bearer header invoke and stream every chain.

The OpenAI provider (the real langchain-openai client against the fake server) waits
between tokens, so a client that sees its first chunk well before its last proves
the answer streams instead of arriving in one piece at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from langserve import RemoteRunnable

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from tests.support.fake_openai import FakeOpenAI
from tests.support.payloads import CHAIN_INPUTS

TOKEN_DELAY_S = 0.05


def remote(service_url: str, path: str, token: str | None) -> RemoteRunnable:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return RemoteRunnable(f"{service_url}{path}", headers=headers, timeout=30)


@asynccontextmanager
async def aremote(service_url: str, path: str, token: str | None) -> AsyncIterator[RemoteRunnable]:
    """Closes the client's async pool inside the test's own event loop."""
    runnable = remote(service_url, path, token)
    try:
        yield runnable
    finally:
        await runnable.async_client.aclose()


@pytest.mark.parametrize("path", [INTERACTIONS_PATH, LEAD_SCORING_PATH, INSIGHTS_CHAT_PATH])
async def test_remote_runnable_invokes(service_url: str, mint: Callable[..., str], path: str) -> None:
    async with aremote(service_url, path, mint()) as runnable:
        output = await runnable.ainvoke(CHAIN_INPUTS[path])
    assert isinstance(output, dict) and output


def test_remote_runnable_sync_invoke(service_url: str, mint: Callable[..., str]) -> None:
    output = remote(service_url, LEAD_SCORING_PATH, mint()).invoke(CHAIN_INPUTS[LEAD_SCORING_PATH])
    assert output["lead_id"] == "lead-1" and output["model_version"] == "logreg-v1"


@pytest.mark.parametrize("path", [INTERACTIONS_PATH, INSIGHTS_CHAT_PATH])
async def test_chunks_arrive_before_the_run_ends(
    service_url: str, mint: Callable[..., str], openai_provider: FakeOpenAI, path: str
) -> None:
    openai_provider.token_delay_s = TOKEN_DELAY_S
    arrivals: list[tuple[float, dict]] = []
    async with aremote(service_url, path, mint()) as runnable:
        async for chunk in runnable.astream(CHAIN_INPUTS[path]):
            arrivals.append((time.monotonic(), chunk))
    text_chunks = [t for t, c in arrivals if "summary" in c or "answer" in c]
    # The chat streams its answer token by token; the analysis streams the summary inside
    # its JSON word by word (the labels and actions around it are not text chunks).
    json_mode = path == INTERACTIONS_PATH
    summary = json.loads(openai_provider.json_reply)["summary"] if json_mode else openai_provider.reply
    token_count = len(summary.split(" "))
    assert len(text_chunks) == token_count
    # The server sleeps TOKEN_DELAY_S before each token: streamed chunks are spread over
    # at least (tokens - 1) delays; a buffered response would deliver them all at once.
    assert text_chunks[-1] - text_chunks[0] >= 0.5 * TOKEN_DELAY_S * (token_count - 1)
    assert arrivals[0][0] < text_chunks[-1], "fast fields must precede the last token"


def test_remote_runnable_sync_stream(service_url: str, mint: Callable[..., str]) -> None:
    chunks = list(remote(service_url, LEAD_SCORING_PATH, mint()).stream(CHAIN_INPUTS[LEAD_SCORING_PATH]))
    assert chunks and chunks[-1]["score"] >= 0


async def test_remote_runnable_without_token_is_refused(service_url: str) -> None:
    async with aremote(service_url, LEAD_SCORING_PATH, None) as runnable:
        with pytest.raises(Exception) as raised:
            await runnable.ainvoke(CHAIN_INPUTS[LEAD_SCORING_PATH])
    assert "401" in str(raised.value)

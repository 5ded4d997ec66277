"""Provider calls end on time and back off as asked, through the chains and through HTTP.

The real langchain-openai client talks to the fake server. These go through the chains,
not the router alone: with a listener (`stream_events`) LangChain runs each chunk of a
chain in a task of its own, without one the chain's body is read in the caller's task,
and the idle deadline must end the call either way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH
from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.server import create_app
from app.core.cpu_pool import FairCpuPool
from chains.context import run_config
from chains.interactions import INTERRUPTED_SUMMARY, build_interaction_chain
from chains.providers.router import ProviderRouter
from tests.conftest import MODEL_CACHE, make_settings
from tests.support.fake_openai import ANALYSIS_REPLY, FakeOpenAI
from tests.support.live_server import live_server
from tests.support.payloads import INTERACTION, QUESTION
from tests.support.stores import sqlite_stores
from tests.test_chains_http import merge_chunks, sse_events

IDLE_S = 1.0
TOTAL_S = 3.0
# The SDK's own read timeout is LLM_TIMEOUT_S too; the stall test keeps it long so only
# our idle deadline can end the stream in time.
SLOW_SDK_S = 10.0
LLM_ANALYSIS = json.loads(ANALYSIS_REPLY)


def timeouts(tmp_path: Path, openai_url: str, *, total_s: float, **extra: object) -> Settings:
    return make_settings(
        tmp_path, llm_providers="openai,local", openai_base_url=openai_url, openai_api_key="sk-test",
        llm_max_retries=1, llm_first_token_timeout_s=2.0, llm_idle_timeout_s=IDLE_S, llm_timeout_s=total_s,
        **extra,
    )


async def analyse(settings: Settings, tmp_path: Path) -> dict:
    async with sqlite_stores(tmp_path) as stores:
        chain = build_interaction_chain(ProviderRouter.from_settings(settings),
                                        FairCpuPool(1, jobs_per_worker=4, model_cache_dir=MODEL_CACHE),
                                        stores.interactions, stores.knowledge)
        return merge_chunks([chunk async for chunk in chain.astream(dict(INTERACTION), run_config("acme", "u"))])


async def test_a_stall_after_the_first_token_ends_the_call(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode = "stall_after_first"  # the labels arrive, then nothing
    settings = timeouts(tmp_path, fake_openai[1], total_s=SLOW_SDK_S)
    output = await asyncio.wait_for(analyse(settings, tmp_path), timeout=SLOW_SDK_S - 2)
    assert output["degraded"] is True and output["degraded_reason"] == "provider_interrupted"
    assert output["confidence"] == LLM_ANALYSIS["confidence"], "the labels that arrived stay"
    assert "may leave" in output["summary"], "the local summary stands in for the one never written"


async def test_a_slow_steady_stream_is_cut_at_the_total_timeout(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    openai_provider.token_delay_s = 0.4  # never idle for IDLE_S, but 18 tokens take 7.2 s
    settings = timeouts(tmp_path, fake_openai[1], total_s=TOTAL_S)
    output = await analyse(settings, tmp_path)
    assert output["degraded_reason"] == "provider_interrupted"
    written, _, local = output["summary"].partition(INTERRUPTED_SUMMARY)
    assert 0 < len(written) < len(LLM_ANALYSIS["summary"]), "cut before the end"
    assert LLM_ANALYSIS["summary"].startswith(written) and "may leave" in local


@pytest.fixture(scope="module")
def timeout_url(tmp_path_factory: pytest.TempPathFactory, fake_openai: tuple[FakeOpenAI, str]) -> Iterator[str]:
    settings = timeouts(tmp_path_factory.mktemp("timeouts"), fake_openai[1], total_s=SLOW_SDK_S)
    with live_server(create_app(settings)) as url:
        yield url


def headers() -> dict[str, str]:
    verifier = TokenVerifier(make_settings(Path("/nonexistent")))
    return {"Authorization": f"Bearer {verifier.mint(tenant_id='acme', user_id='u', roles=('rep',))}"}


@pytest.mark.parametrize("endpoint", ["stream", "stream_events"])
def test_a_chat_stream_that_stalls_ends_with_an_error_event_over_http(
    timeout_url: str, openai_provider: FakeOpenAI, endpoint: str
) -> None:
    openai_provider.mode = "stall_after_first"
    with httpx.Client(base_url=timeout_url, headers=headers(), timeout=SLOW_SDK_S - 2) as http:
        with http.stream("POST", f"{INSIGHTS_CHAT_PATH}/{endpoint}", json={"input": QUESTION}) as response:
            events = sse_events("".join(response.iter_text()))
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "end"], names
    error = json.loads(events[-2][1])
    assert error["code"] == "provider_interrupted" and error["retryable"] is True


def test_retry_after_is_honoured_before_retrying(
    timeout_url: str, openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode, openai_provider.retry_after = "rate_limited", "1"
    with httpx.Client(base_url=timeout_url, headers=headers(), timeout=30) as http:
        output = http.post(f"{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION}).json()["output"]
    assert output["summary"] == LLM_ANALYSIS["summary"], "the retry after the wait succeeded"
    first, second = openai_provider.request_times
    assert second - first >= 0.95, f"retried {second - first:.2f} s after a Retry-After of 1 s"


def test_a_retry_after_past_the_budget_fails_over_at_once(
    timeout_url: str, openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode, openai_provider.retry_after = "rate_limited", "60"
    started = time.monotonic()
    with httpx.Client(base_url=timeout_url, headers=headers(), timeout=30) as http:
        output = http.post(f"{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION}).json()["output"]
    assert len(openai_provider.requests) == 1, "no retry: the wait would outlast the call's budget"
    assert output["degraded_reason"] == "providers_unavailable", "the local analysis answered"
    assert time.monotonic() - started < SLOW_SDK_S, "did not wait for the provider"

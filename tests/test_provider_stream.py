"""A provider's stream holds no token it has already handed on, unless a callback listens.

LangChain's `BaseChatModel.astream` keeps every chunk until the answer ends, to merge
them for the run's callbacks: about 200 KB per stream mid-answer at 300 streams
(tracemalloc), most of a stream's memory. Nobody listening, the router reads the chat
model's own stream; listening (`stream_log`, `stream_events`, LangSmith), it keeps
LangChain's path, and the callbacks get every token.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from chains.context import RunContext, RunIdentity, with_run_context
from chains.providers.models import Provider
from chains.providers.router import TOKENS_PER_TURN, ProviderRouter
from tests.conftest import make_settings
from tests.support.fake_openai import FakeOpenAI

PIECES = 200
handed_out: list[weakref.ref[AIMessageChunk]] = []


class PieceByPieceModel(BaseChatModel):
    """A chat model with a native async stream, as the provider SDK integrations have."""

    @property
    def _llm_type(self) -> str:
        return "piece-by-piece"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for n in range(PIECES):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=f"w{n} "))
            handed_out.append(weakref.ref(chunk.message))
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


class TokenCounter(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens = 0

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens += 1


def router(tmp_path: Any) -> ProviderRouter:
    routed = ProviderRouter.from_settings(make_settings(tmp_path, llm_providers="local"))
    routed.providers[:] = [Provider("piece", PieceByPieceModel(), "piece-1")]
    return routed


async def read_all(routed: ProviderRouter, config: Any) -> tuple[str, int]:
    """The text, and how many handed-out chunks were still alive at the last token."""
    handed_out.clear()
    text, alive = "", 0
    async for token in routed.astream_text([], config=config):
        text += token
        if text.endswith(f"w{PIECES - 1} "):
            gc.collect()
            alive = sum(ref() is not None for ref in handed_out)
    return text, alive


async def test_without_listeners_the_stream_keeps_no_token_it_handed_on(tmp_path: Any) -> None:
    context = RunContext(RunIdentity(tenant_id="acme", user_id="u")).for_run(token_callbacks=False)
    text, alive = await read_all(router(tmp_path), with_run_context(None, context))
    assert text == "".join(f"w{n} " for n in range(PIECES))
    # At most the group of chunks that arrived together, and is being handed on.
    assert alive <= TOKENS_PER_TURN + 1, f"{alive} of {PIECES} chunks kept until the end"


async def test_with_a_listener_every_token_reaches_it(tmp_path: Any) -> None:
    counter = TokenCounter()
    context = RunContext(RunIdentity(tenant_id="acme", user_id="u")).for_run(token_callbacks=True)
    config = {**with_run_context(None, context), "callbacks": [counter]}
    text, _ = await read_all(router(tmp_path), config)
    assert text == "".join(f"w{n} " for n in range(PIECES))
    assert counter.tokens >= PIECES


async def test_a_burst_of_tokens_gives_other_streams_a_turn_now_and_then(tmp_path: Any) -> None:
    """The model's 200 pieces are all ready at once (as a provider's burst from one network
    read is): reading them must still let the event loop serve other streams."""
    turns, reading = 0, True

    async def another_stream() -> None:
        nonlocal turns
        while reading:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.ensure_future(another_stream())
    await asyncio.sleep(0)
    before = turns
    context = RunContext(RunIdentity(tenant_id="acme", user_id="u")).for_run(token_callbacks=False)
    text, _ = await read_all(router(tmp_path), with_run_context(None, context))
    reading = False
    await other
    assert text == "".join(f"w{n} " for n in range(PIECES))
    assert turns - before >= PIECES // TOKENS_PER_TURN, f"{turns - before} turns while reading {PIECES} pieces"


def openai_router(tmp_path: Any, url: str, timeout_s: float) -> ProviderRouter:
    """The real langchain-openai client. It keeps one HTTP client per base URL and
    timeout for the process, whose pooled connection belongs to the event loop that
    opened it; each test has a loop of its own, so each gets a timeout of its own."""
    return ProviderRouter.from_settings(make_settings(
        tmp_path, llm_providers="openai", openai_base_url=url, openai_api_key="sk-test", llm_max_retries=0,
        llm_timeout_s=timeout_s))


def unheard() -> Any:
    return with_run_context(None, RunContext(RunIdentity(tenant_id="acme", user_id="u")).for_run(token_callbacks=False))


async def test_tokens_that_arrive_together_go_on_as_one_piece(
    tmp_path: Any, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    """The whole answer in one network write (a late reader finds it so): what comes after
    the provider pays its per-chunk cost per group, not per token."""
    openai_provider.burst = True
    pieces = [piece async for piece in openai_router(tmp_path, fake_openai[1], 21.0).astream_text([], config=unheard())]
    tokens = openai_provider.tokens()
    assert "".join(pieces) == "".join(tokens)
    assert len(pieces) <= len(tokens) // TOKENS_PER_TURN + 2, f"{len(pieces)} pieces for {len(tokens)} tokens"


async def test_a_token_that_arrives_alone_is_not_held_for_the_next(
    tmp_path: Any, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    """The provider sends one token, then waits until the caller has it: a group held
    back to fill would never arrive."""
    openai_provider.mode = "hold_after_first"
    stream = openai_router(tmp_path, fake_openai[1], 22.0).astream_text([], config=unheard())
    tokens = openai_provider.tokens()
    try:
        assert await asyncio.wait_for(anext(stream), timeout=5) == tokens[0]
    finally:
        openai_provider.resume.set()
    assert "".join([piece async for piece in stream]) == "".join(tokens[1:])

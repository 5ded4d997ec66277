"""How the router reads a provider's stream.

It holds no token it has already handed on, unless a callback listens. LangChain's
`BaseChatModel.astream` keeps every chunk until the answer ends, to merge them for the
run's callbacks: about 200 KB per stream mid-answer at 300 streams (tracemalloc), most of
a stream's memory. Nobody listening, the router reads the chat model's own stream;
listening (`stream_log`, `stream_events`, LangSmith), it keeps LangChain's path, and the
callbacks get every token.

A reader task reads ahead (`Arrivals`), and what arrived together goes on as one piece,
without waiting for more, without keeping chunk objects or reading far ahead of a slow
client, and with the stream closed once, by the reader, however the caller leaves.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from chains.context import RunContext, RunIdentity, with_run_context
from chains.providers.arrivals import Arrivals
from chains.providers.models import Provider
from chains.providers.router import READ_AHEAD, TOKENS_PER_TURN, ProviderRouter, ProviderStreamInterrupted
from tests.conftest import make_settings
from tests.support.fake_openai import FakeOpenAI

PIECES = 200
handed_out: list[weakref.ref[AIMessageChunk]] = []


class PieceByPieceModel(BaseChatModel):
    """A chat model with a native async stream, as the provider SDK integrations have;
    `pause_s` before each piece from `paced_from` on models a provider's pace."""

    pause_s: float = 0.0
    paced_from: int = 0

    @property
    def _llm_type(self) -> str:
        return "piece-by-piece"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for n in range(PIECES):
            if self.pause_s and n >= self.paced_from:
                await asyncio.sleep(self.pause_s)
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


def router(tmp_path: Any, model: BaseChatModel | None = None, **settings: Any) -> ProviderRouter:
    routed = ProviderRouter.from_settings(make_settings(tmp_path, llm_providers="local", **settings))
    routed.providers[:] = [Provider("piece", model or PieceByPieceModel(), "piece-1")]
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
    assert alive <= 2, f"{alive} of {PIECES} chunks kept until the end"


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


async def test_a_caller_held_up_downstream_holds_up_the_reading_too(tmp_path: Any) -> None:
    """A slow client: the reader stops `READ_AHEAD` tokens ahead, keeping their text, not
    the chunk objects, rather than read the rest of the answer."""
    handed_out.clear()
    stream = router(tmp_path).astream_text([], config=unheard())
    text = await anext(stream)
    await asyncio.sleep(0.05)  # the client is slow to take the next piece
    assert READ_AHEAD < PIECES and len(handed_out) <= READ_AHEAD + TOKENS_PER_TURN + 1, len(handed_out)
    gc.collect()
    assert sum(ref() is not None for ref in handed_out) <= 2, "chunk objects kept while the client is away"
    text += "".join([piece async for piece in stream])
    assert text == "".join(f"w{n} " for n in range(PIECES))


class SilentAfterTwo(PieceByPieceModel):
    """Two pieces, then silence; its close takes a few loop turns (as a connection's does)
    and fails (as a reset one may)."""

    closed_in: list[asyncio.Task[Any] | None] = []

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="one "))
        yield ChatGenerationChunk(message=AIMessageChunk(content="two "))
        try:
            await asyncio.sleep(3600)
        finally:
            for _ in range(3):
                await asyncio.sleep(0)
            self.closed_in.append(asyncio.current_task())
            raise ConnectionResetError("reset while closing")


async def test_a_client_that_leaves_has_the_stream_closed_once_and_its_error_kept_quiet(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """sse-starlette stops a stream whose client left through an anyio cancel scope, which
    cancels the task again at every turn until it ends: the teardown must not close the
    stream from a second task while the reader still closes it, nor leave the error of
    its close unretrieved."""
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    model = SilentAfterTwo()
    received: list[str] = []

    async def client() -> None:
        async for piece in router(tmp_path, model).astream_text([], config=unheard()):
            received.append(piece)

    with caplog.at_level(logging.DEBUG, logger="chains.providers"):
        async with anyio.create_task_group() as request:
            request.start_soon(client)
            while "".join(received) != "one two ":
                await asyncio.sleep(0.01)
            request.cancel_scope.cancel()  # the client left
        for _ in range(20):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert len(model.closed_in) == 1, "the stream was closed, once"
    assert not any("already running" in str(record.exc_info) for record in caplog.records), "closed from two tasks"
    assert not unretrieved, unretrieved


async def test_past_its_deadline_a_stream_read_ahead_does_not_spin_the_loop(tmp_path: Any) -> None:
    """The provider is fast and the client slow: the total deadline passes while nobody
    waits for the provider. The next wait for it is cut at the next check; until then the
    deadline must not be checked at every turn of the loop."""
    loop = asyncio.get_running_loop()
    timers = 0
    schedule = loop.call_later

    def counted(delay: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return schedule(delay, callback, *args, **kwargs)

    # At once as far as the reader reads ahead, then paced: it waits for the provider again
    # only after the client is back.
    model = PieceByPieceModel(pause_s=0.02, paced_from=READ_AHEAD + 2)
    stream = router(tmp_path, model, llm_timeout_s=0.3).astream_text([], config=unheard())
    await anext(stream)
    await asyncio.sleep(0.05)  # the reader reads ahead, then waits for the client
    loop.call_later = counted  # type: ignore[method-assign]
    try:
        await asyncio.sleep(1.3)  # the deadline (0.3 s) and the first check (1 s) pass meanwhile
    finally:
        loop.call_later = schedule  # type: ignore[method-assign]
    assert timers <= 3, f"{timers} timers set while the client was away"  # this sleep's, and a check's
    with pytest.raises(ProviderStreamInterrupted):
        async for _ in stream:
            pass


class SlowToClose(PieceByPieceModel):
    """Two pieces, then silence; closing it takes 0.3 s (an SDK closing its HTTP response)."""

    cleanup: list[str] = []

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        try:
            yield ChatGenerationChunk(message=AIMessageChunk(content="one "))
            yield ChatGenerationChunk(message=AIMessageChunk(content="two "))
            await asyncio.sleep(3600)
        finally:
            try:
                await asyncio.sleep(0.3)
                self.cleanup.append("finished")
            except asyncio.CancelledError:
                self.cleanup.append("cancelled")
                raise


@pytest.mark.parametrize("deadlines", [{"llm_idle_timeout_s": 0.2}, {"llm_timeout_s": 0.2}])
async def test_a_deadline_that_passes_while_the_provider_closes_does_not_cut_its_close(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, deadlines: dict[str, float]
) -> None:
    """The client leaves 0.15 s into a silence; the provider's close takes 0.3 s, and the
    idle (or total) deadline of 0.2 s passes meanwhile. The close is the provider's own
    cleanup, not a wait for its answer: a deadline must not cancel it."""
    monkeypatch.setattr(Arrivals, "CHECK_EVERY_S", 0.05)
    model = SlowToClose()
    model.cleanup = []

    async def client() -> None:
        async for _ in router(tmp_path, model, **deadlines).astream_text([], config=unheard()):
            pass

    task = asyncio.ensure_future(client())
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)
    assert model.cleanup == ["finished"]


class Recorded(PieceByPieceModel):
    closed: list[str] = []

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        try:
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                yield chunk
        finally:
            self.closed.append("closed")


async def test_a_client_that_leaves_after_the_first_piece_has_the_stream_closed_at_once(tmp_path: Any) -> None:
    """The reader is cancelled before its first step, so its own `finally` never runs: the
    stream must still be closed when the router's stream is, not by the collector later."""
    model = Recorded(pause_s=0.01, paced_from=1)
    model.closed = []
    stream = router(tmp_path, model).astream_text([], config=unheard())
    assert await anext(stream) == "w0 "
    await stream.aclose()
    assert model.closed == ["closed"]

"""Ordered provider failover with retries, timeouts and mid-stream failure handling.

`ProviderRouter.astream_text` tries each configured LLM in turn. Before the first
token a provider gets retried with exponential backoff (tenacity) when the failure is
transient, then the next provider takes over; every call has a first-token and an
idle-gap timeout so nothing hangs. After text has reached the caller a restart would
duplicate it, so a failure then raises `ProviderStreamInterrupted` and the transport
ends the stream with a clear, retryable error event.

Across calls, each remote provider has a circuit breaker (`chains.providers.health`):
one that keeps failing or answering slowly is skipped without being waited for, until a
trial call after a cool-down succeeds. Each call is recorded once, when it ends.

`local` is not a chat model: when it is configured (last in `LLM_PROVIDERS`), the
caller's own composition function writes the text (the embedded analysis has the
structured facts already; it never parses a prompt), streamed word by word.

Every LLM is used through its async streaming API (`astream`), which the OpenAI,
Anthropic and Google models implement natively: no executor hop per token.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from chains import spans
from chains.context import MissingIdentity, RunRecord, run_context
from chains.providers.arrivals import Arrivals, close_stream
from chains.providers.health import AlwaysHealthy, CallOutcome, ProviderHealth
from chains.providers.models import Provider, build_provider
from chains.providers.settings import LOCAL, ProviderSettings
from chains.streaming import nobody_listens
from chains.text import WholeCharacters

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
LOCAL_MODEL_NAME = "local-composer-v1"
# A provider's tokens often come several to a network read, and they are read ahead
# without waiting (`Arrivals`): a long burst would hold the event loop (other streams'
# first events, the stream's own write) until it ended. Every this many tokens the
# reader gives the loop a turn. What the chain has not taken yet goes on as one piece;
# the reader stops this many tokens (their text, a few KB) ahead of a chain held up.
TOKENS_PER_TURN = 8
READ_AHEAD = 64
_WORD = re.compile(r"\S+\s*|\s+")


class ProviderError(RuntimeError):
    """Every provider failed before producing text."""

    code = "provider_unavailable"
    retryable = True


class FirstTokenTimeout(RuntimeError):
    """A provider stayed silent too long: move on rather than retry the same wait."""


class ProviderStreamInterrupted(ProviderError):
    """A provider failed after part of the answer had been streamed."""

    code = "provider_interrupted"


def _run_state(config: RunnableConfig | None) -> tuple[RunnableConfig | None, RunRecord, Context | None]:
    """The run's record, the config to call models with, and the parent of its spans.

    Without per-token listeners the callbacks become an empty list, not a missing key:
    a missing key would be filled from the parent run's context and bring every
    handler back (an asyncio task per handler per token).
    """
    try:
        context = run_context(config)
    except MissingIdentity:
        return config, RunRecord(), None  # in-process callers without a run (tests, tools)
    if config is not None and not context.token_callbacks:
        config = {**config, "callbacks": []}
    return config, context.record, context.trace_parent


def is_transient(error: BaseException) -> bool:
    """Timeouts, dropped connections, 429 and 5xx are worth a retry; bad keys are not."""
    if isinstance(error, (TimeoutError, ConnectionError, httpx.TransportError)):
        return True
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in TRANSIENT_STATUS
    # SDK connection/timeout errors (openai.APIConnectionError, anthropic.APITimeoutError…)
    return type(error).__name__ in {"APIConnectionError", "APITimeoutError", "ServiceUnavailable"}


def retry_after_s(error: BaseException | None) -> float | None:
    """The wait a provider asked for (`retry-after-ms`, or `Retry-After` in seconds or as
    an HTTP date), from the HTTP response an SDK error carries; None without a hint."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        if (millis := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(millis) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        if value.strip().isdigit():
            return float(value)
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _text_and_usage(chunk: AIMessageChunk) -> tuple[str, UsageMetadata | None]:
    """What the router needs of a chunk, without the message object read ahead."""
    piece = chunk.text if isinstance(chunk.content, list) else chunk.content
    return str(piece) if piece else "", chunk.usage_metadata


async def stream_words(text: str) -> AsyncIterator[str]:
    """Locally composed text, word by word, yielding to other streams in between."""
    for token in _WORD.findall(text):
        yield token
        await asyncio.sleep(0)


class ProviderRouter:
    """Streams text from the first provider that works, in the configured order."""

    def __init__(
        self,
        providers: Sequence[Provider],
        settings: ProviderSettings,
        *,
        local_fallback: bool,
        health: ProviderHealth | None = None,
        tracer: Tracer = spans.NO_TRACER,
    ) -> None:
        if not providers and not local_fallback:
            raise ValueError("at least one provider is required")
        self.providers = list(providers)
        self.settings = settings
        self.local_fallback = local_fallback
        self.health: ProviderHealth = health or AlwaysHealthy()
        self.tracer = tracer  # a `provider_call` span per provider tried (README, "Tracing")

    @classmethod
    def from_settings(
        cls, settings: ProviderSettings, *, health: ProviderHealth | None = None, tracer: Tracer = spans.NO_TRACER
    ) -> ProviderRouter:
        remote = [build_provider(name, settings) for name in settings.llm_providers if name != LOCAL]
        return cls(remote, settings, local_fallback=LOCAL in settings.llm_providers, health=health, tracer=tracer)

    @property
    def has_llm(self) -> bool:
        return bool(self.providers)

    @classmethod
    def local_only(cls, settings: ProviderSettings, *, tracer: Tracer = spans.NO_TRACER) -> ProviderRouter:
        """The embedded analysis alone: what answers under overload."""
        return cls([], settings, local_fallback=True, tracer=tracer)

    def _span(self, parent: Context | None, provider: str, model: str, attempt: int) -> Span:
        return self.tracer.start_span(
            "provider_call", context=parent, record_exception=False, set_status_on_exception=False,
            attributes={spans.PROVIDER: provider, spans.MODEL: model, spans.FAILOVER_ATTEMPT: attempt},
        )

    async def _open(
        self, provider: Provider, messages: list[BaseMessage], config: RunnableConfig | None, json_mode: bool
    ) -> tuple[AsyncIterator[AIMessageChunk], AIMessageChunk | None]:
        """Starts a stream and waits for its first chunk, retrying transient failures.

        A provider's Retry-After is honoured while the wait still ends inside the call's
        budget (`LLM_TIMEOUT_S`, retries included); a longer one means: fail over now.
        """
        loop = asyncio.get_running_loop()
        budget_ends = loop.time() + self.settings.llm_timeout_s
        backoff = wait_exponential_jitter(initial=0.1, max=2.0)

        def wait(state: RetryCallState) -> float:
            hinted = retry_after_s(state.outcome.exception() if state.outcome else None)
            return hinted if hinted is not None else backoff(state)

        def past_budget(state: RetryCallState) -> bool:
            return loop.time() + state.upcoming_sleep >= budget_ends

        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.settings.llm_max_retries + 1) | past_budget,
            wait=wait,
            retry=retry_if_exception(is_transient),
            reraise=True,
        ):
            with attempt:
                model = provider.json_model if json_mode and provider.json_model is not None else provider.model
                iterator = aiter(model_stream(model, messages, config))
                try:
                    async with asyncio.timeout(self.settings.llm_first_token_timeout_s):
                        first = await anext(iterator, None)
                except TimeoutError as error:
                    await close_stream(iterator)
                    raise FirstTokenTimeout(f"no first token from {provider.name}") from error
                except BaseException:
                    await close_stream(iterator)
                    raise
                return iterator, first
        raise AssertionError("unreachable: tenacity reraises")

    async def astream_text(
        self,
        messages: list[BaseMessage],
        *,
        config: RunnableConfig | None = None,
        local: Callable[[], Awaitable[str]] | None = None,
        json_mode: bool = False,
    ) -> AsyncIterator[str]:
        """Text of the first provider that answers; `local()` writes it when `local` serves.
        `json_mode` asks the provider for one JSON object (where its API can)."""
        config, report, parent = _run_state(config)
        loop = asyncio.get_running_loop()
        attempt = 0
        for provider in self.providers:
            if not await self.health.allow(provider.name):
                report.failures.append(f"{provider.name}: circuit open")
                continue
            attempt += 1
            span = self._span(parent, provider.name, provider.model_name, attempt)
            started = loop.time()
            try:
                iterator, first = await self._open(provider, messages, config, json_mode)
            except Exception as error:  # noqa: BLE001 - any failure means: try the next one
                spans.failed(span, error)
                span.end()
                log.warning("provider %s failed before streaming: %r", provider.name, error)
                report.failures.append(f"{provider.name}: {type(error).__name__}")
                await self.health.record(provider.name, CallOutcome(ok=False, timed_out=_timed_out(error)))
                continue
            except BaseException:  # cancelled while waiting: the client left
                span.end()
                raise
            first_token_s: float | None = None  # to the first text, as the caller waits for it
            report.provider, report.model = provider.name, provider.model_name
            emitted = False
            usage = [0, 0]
            deadline = loop.time() + self.settings.llm_timeout_s
            groups = Arrivals(iterator, keep=_text_and_usage, first=first, per_turn=TOKENS_PER_TURN,
                              ahead=READ_AHEAD, idle_s=self.settings.llm_idle_timeout_s, deadline=deadline)
            whole = WholeCharacters()
            try:
                async for group in groups:
                    pieces = []
                    for piece, reported in group:
                        if reported:
                            usage[0] += reported.get("input_tokens", 0)
                            usage[1] += reported.get("output_tokens", 0)
                        if piece:
                            pieces.append(piece)
                    if not pieces or not (text := whole.feed("".join(pieces))):
                        continue
                    if not emitted:
                        report.first_model_token_at = time.perf_counter()
                        first_token_s = loop.time() - started
                        span.add_event(spans.FIRST_MODEL_TOKEN)
                    emitted = True
                    yield text
                if tail := whole.flush():
                    emitted = True
                    yield tail
                report.input_tokens += usage[0]
                report.output_tokens += usage[1]
                span.set_attributes({"ai.tokens_in": usage[0], "ai.tokens_out": usage[1]})
            except Exception as error:  # noqa: BLE001
                spans.failed(span, error)
                report.failures.append(f"{provider.name}: {type(error).__name__} mid-stream")
                log.warning("provider %s failed mid-stream: %r", provider.name, error)
                # A client that leaves is not the provider's failure: that ends the
                # generator with GeneratorExit/CancelledError, which records nothing.
                await self.health.record(
                    provider.name, CallOutcome(ok=False, first_token_s=first_token_s, timed_out=_timed_out(error))
                )
                if emitted:
                    raise ProviderStreamInterrupted(
                        f"provider {provider.name} failed after streaming began"
                    ) from error
                continue
            finally:
                span.end()
                await groups.aclose()
            if first_token_s is None:  # an empty answer: its end is its first token
                first_token_s = loop.time() - started
            await self.health.record(provider.name, CallOutcome(ok=True, first_token_s=first_token_s))
            return
        if self.local_fallback and local is not None:
            report.provider, report.model = LOCAL, LOCAL_MODEL_NAME
            with self._span(parent, LOCAL, LOCAL_MODEL_NAME, attempt + 1) as span:
                try:
                    text = await local()
                except Exception as error:
                    spans.failed(span, error)
                    raise
                report.first_model_token_at = time.perf_counter()
                span.add_event(spans.FIRST_MODEL_TOKEN)
                async for token in stream_words(text):
                    report.output_tokens += 1
                    yield token
            return
        raise ProviderError("every configured provider failed: " + "; ".join(report.failures))


def model_stream(
    model: Runnable[Any, Any], messages: list[BaseMessage], config: RunnableConfig | None
) -> AsyncIterator[AIMessageChunk]:
    """The provider's stream of chunks.

    LangChain's `astream` reports every token to the run's callbacks and keeps every
    chunk until the answer ends, to merge them for `on_llm_end`. When a callback listens
    (`stream_log`, `stream_events`, LangSmith) that is what it needs. When none does
    (`_run_state` then passes an empty list), the chat model's own `_astream` is read
    directly: the kept chunks were most of a stream's memory (about 0.8 KB a token,
    200 KB per stream mid-answer at 300 concurrent streams, tracemalloc). Models that depend on
    `astream` itself (their own callbacks, a rate limiter, no native async stream,
    content blocks) always go through it.
    """
    if config is not None and config.get("callbacks") == []:
        chat, kwargs = _unbound(model)
        if _streams_directly(chat, kwargs):
            return _direct_stream(chat, messages, kwargs)
    return model.astream(messages, config=config)


def _unbound(model: Runnable[Any, Any]) -> tuple[Runnable[Any, Any], dict[str, Any]]:
    """The model under `.bind(...)` layers (such as the JSON mode), with their arguments."""
    kwargs: dict[str, Any] = {}
    while isinstance(model, RunnableBinding) and not model.config and not model.config_factories:
        kwargs = {**model.kwargs, **kwargs}
        model = model.bound
    return model, kwargs


def _streams_directly(chat: Runnable[Any, Any], kwargs: dict[str, Any]) -> bool:
    """Nothing `astream` would add is needed: no handler would be called (none from the
    environment either: verbose, debug, a `tracing_v2_enabled` block), the model streams
    natively and is not told not to, has no rate limiter and no content-block output."""
    return (
        isinstance(chat, BaseChatModel)
        and type(chat)._astream is not BaseChatModel._astream
        and not chat._streaming_disabled(**kwargs)
        and chat.rate_limiter is None and chat.output_version in (None, "v0")
        and nobody_listens([], chat.callbacks, verbose=chat.verbose)
    )


async def _direct_stream(
    chat: BaseChatModel, messages: list[BaseMessage], kwargs: dict[str, Any]
) -> AsyncIterator[AIMessageChunk]:
    for tracing_only in ("ls_structured_output_format", "structured_output_format"):
        kwargs.pop(tracing_only, None)  # `astream` takes them out before the provider sees them
    async with aclosing(chat._astream(messages, **kwargs)) as chunks:
        async for chunk in chunks:
            if chunk.generation_info:  # finish reason, model name: as `astream` passes them on
                chunk.message.response_metadata = {**chunk.generation_info, **chunk.message.response_metadata}
            yield chunk.message  # type: ignore[misc]


def _timed_out(error: BaseException) -> bool:
    return isinstance(error, (TimeoutError, FirstTokenTimeout)) or type(error).__name__ == "APITimeoutError"

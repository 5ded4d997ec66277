"""Ordered provider failover with retries, timeouts and mid-stream failure handling.

`ProviderRouter.astream_text` tries each configured provider in turn. Before the first
token a provider gets retried with exponential backoff (tenacity) when the failure is
transient, then the next provider takes over; every call has a first-token and an
idle-gap timeout so nothing hangs. After text has reached the caller a restart would
duplicate it, so a failure then raises `ProviderStreamInterrupted` and the transport
ends the stream with a clear, retryable error event.

Every model is used through its async streaming API (`astream`), which the OpenAI,
Anthropic, Google and local models implement natively: no executor hop per token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableConfig
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from chains.local.chat_model import LocalChatModel

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class ProviderError(RuntimeError):
    """Every provider failed before producing text."""

    code = "provider_unavailable"
    retryable = True


class FirstTokenTimeout(RuntimeError):
    """A provider stayed silent too long: move on rather than retry the same wait."""


class ProviderStreamInterrupted(ProviderError):
    """A provider failed after part of the answer had been streamed."""

    code = "provider_interrupted"


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What the app's settings say about providers (chains do not read the environment)."""

    order: Sequence[str] = ("local",)
    timeout_s: float = 30.0
    first_token_timeout_s: float = 10.0
    idle_timeout_s: float = 15.0
    max_retries: int = 2
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    anthropic_api_key: str | None = None
    anthropic_model: str = "claude-3-5-haiku-latest"
    google_api_key: str | None = None
    google_model: str = "gemini-2.0-flash"


@dataclass(slots=True)
class Provider:
    name: str
    model: BaseChatModel
    model_name: str


@dataclass(slots=True)
class StreamReport:
    """What served the calls of a run, for the audit trail and token accounting.

    A run's report rides in `config["configurable"][STREAM_REPORT_KEY]`; the router adds
    each successful call's provider, model and the usage the provider reported.
    """

    provider: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    failures: list[str] = field(default_factory=list)


STREAM_REPORT_KEY = "__stream_report"
# Set False by a server when nobody listens to per-token callbacks (no stream_events,
# no tracer): the model then streams without a callback fan-out per token, which
# otherwise costs LangChain an asyncio task per handler per token.
TOKEN_CALLBACKS_KEY = "__token_callbacks"


def _call_config(config: RunnableConfig | None) -> tuple[RunnableConfig | None, StreamReport | None]:
    configurable = (config or {}).get("configurable") or {}
    report = configurable.get(STREAM_REPORT_KEY)
    if config is not None and configurable.get(TOKEN_CALLBACKS_KEY) is False:
        # An empty list, not a missing key: a missing key would be filled from the
        # parent run's context and bring every handler back.
        config = {**config, "callbacks": []}
    return config, report if isinstance(report, StreamReport) else None


def build_provider(name: str, settings: ProviderSettings) -> Provider:
    """One LangChain chat model, with its own retries off: the router owns retry policy."""
    if name == "openai":
        from langchain_openai import ChatOpenAI

        return Provider(
            name,
            ChatOpenAI(
                model=settings.openai_model,
                api_key=settings.openai_api_key or "not-needed-for-local-servers",
                base_url=settings.openai_base_url,
                max_retries=0,
                timeout=settings.timeout_s,
                stream_usage=True,
            ),
            settings.openai_model,
        )
    if name == "anthropic":
        from langchain_anthropic import ChatAnthropic

        return Provider(
            name,
            ChatAnthropic(
                model_name=settings.anthropic_model,
                api_key=settings.anthropic_api_key or "",
                max_retries=0,
                timeout=settings.timeout_s,
                stop=None,
            ),
            settings.anthropic_model,
        )
    if name == "google":
        from langchain_google_genai import ChatGoogleGenerativeAI

        return Provider(
            name,
            ChatGoogleGenerativeAI(
                model=settings.google_model,
                google_api_key=settings.google_api_key,
                max_retries=0,
                timeout=settings.timeout_s,
            ),
            settings.google_model,
        )
    if name == "local":
        return Provider(name, LocalChatModel(), "local-composer-v1")
    raise ValueError(f"unknown provider {name!r}")


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


def _add_usage(chunk: AIMessageChunk, usage: list[int]) -> None:
    reported = chunk.usage_metadata
    if reported:
        usage[0] += reported.get("input_tokens", 0)
        usage[1] += reported.get("output_tokens", 0)


class ProviderRouter:
    """Streams text from the first provider that works, in the configured order."""

    def __init__(
        self,
        providers: Sequence[Provider],
        settings: ProviderSettings,
    ) -> None:
        if not providers:
            raise ValueError("at least one provider is required")
        self.providers = list(providers)
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> ProviderRouter:
        return cls([build_provider(name, settings) for name in settings.order], settings)

    @property
    def primary(self) -> Provider:
        return self.providers[0]

    async def _open(
        self, provider: Provider, messages: list[BaseMessage], config: RunnableConfig | None
    ) -> tuple[AsyncIterator[AIMessageChunk], AIMessageChunk | None]:
        """Starts a stream and waits for its first chunk, retrying transient failures."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.settings.max_retries + 1),
            wait=wait_exponential_jitter(initial=0.1, max=2.0),
            retry=retry_if_exception(is_transient),
            reraise=True,
        ):
            with attempt:
                stream = provider.model.astream(messages, config=config)
                iterator = aiter(stream)
                try:
                    async with asyncio.timeout(self.settings.first_token_timeout_s):
                        first = await anext(iterator, None)
                except TimeoutError as error:
                    await _close(iterator)
                    raise FirstTokenTimeout(f"no first token from {provider.name}") from error
                except BaseException:
                    await _close(iterator)
                    raise
                return iterator, first
        raise AssertionError("unreachable: tenacity reraises")

    async def astream_text(
        self,
        messages: list[BaseMessage],
        *,
        config: RunnableConfig | None = None,
    ) -> AsyncIterator[str]:
        config, run_report = _call_config(config)
        report = run_report if run_report is not None else StreamReport()
        for provider in self.providers:
            try:
                iterator, first = await self._open(provider, messages, config)
            except Exception as error:  # noqa: BLE001 - any failure means: try the next one
                log.warning("provider %s failed before streaming: %r", provider.name, error)
                report.failures.append(f"{provider.name}: {type(error).__name__}")
                continue
            report.provider, report.model = provider.name, provider.model_name
            emitted = False
            usage = [0, 0]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.timeout_s
            watchdog = _IdleWatchdog(self.settings.idle_timeout_s, deadline)
            try:
                chunk = first
                while chunk is not None:
                    _add_usage(chunk, usage)
                    text = chunk.text if isinstance(chunk.content, list) else chunk.content
                    if text:
                        emitted = True
                        yield str(text)
                    chunk = await watchdog.wait(anext(iterator, None))
                report.input_tokens += usage[0]
                report.output_tokens += usage[1]
            except Exception as error:  # noqa: BLE001
                report.failures.append(f"{provider.name}: {type(error).__name__} mid-stream")
                log.warning("provider %s failed mid-stream: %r", provider.name, error)
                if emitted:
                    raise ProviderStreamInterrupted(
                        f"provider {provider.name} failed after streaming began"
                    ) from error
                continue
            finally:
                watchdog.close()
                await _close(iterator)
            return
        raise ProviderError("every configured provider failed: " + "; ".join(report.failures))


class _IdleWatchdog:
    """Idle and total timeouts for a stream without a timer per token.

    A per-token `asyncio.timeout` costs a timer-heap push and a cancelled entry per
    token; with hundreds of streams that heap churn was a quarter of the server's CPU.
    Instead one check per second looks at whether the stream is *waiting for the
    provider* and for how long, and only then cancels the waiting task. The task is
    only ever cancelled inside `wait`, never while the consumer holds a chunk.
    """

    CHECK_EVERY_S = 1.0

    def __init__(self, idle_s: float, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._idle_s = idle_s
        self._deadline = deadline
        self._waiting_since: float | None = None
        self._fired = False
        self._handle = self._loop.call_later(min(self.CHECK_EVERY_S, idle_s), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        waiting = self._waiting_since
        if waiting is not None and (now - waiting >= self._idle_s or now >= self._deadline):
            self._fired = True
            assert self._task is not None
            self._task.cancel()
            return
        self._handle = self._loop.call_later(self.CHECK_EVERY_S, self._check)

    async def wait(self, awaitable: Any) -> Any:
        self._waiting_since = self._loop.time()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._fired and self._task is not None:
                self._task.uncancel()
                raise TimeoutError("provider went silent or exceeded its per-call timeout") from None
            raise
        finally:
            self._waiting_since = None

    def close(self) -> None:
        self._handle.cancel()


async def _close(iterator: AsyncIterator[AIMessageChunk]) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # noqa: BLE001 - closing a broken stream must not mask its error
            log.debug("error while closing provider stream", exc_info=True)

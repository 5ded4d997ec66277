"""The `local` provider: a LangChain chat model that composes from facts, async-native.

It answers the chains' own prompts (see `chains.prompts`): it reads the facts block
and writes with `chains.local.composer`, streaming word by word. Asked anything else
it says plainly that it is the offline model, rather than pretend to be an LLM.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from chains.local.composer import compose_answer, compose_summary
from chains.prompts import TASK_ANSWER, TASK_SUMMARY, facts_of

_TOKEN = re.compile(r"\S+\s*|\s+")
MODEL_NAME = "local-composer-v1"
OFFLINE_REPLY = (
    "I am the embedded offline analysis model: I summarise interactions and answer from "
    "the knowledge base, but I cannot chat freely. Configure LLM_PROVIDERS for that."
)


def compose(messages: list[BaseMessage]) -> str:
    facts = facts_of(messages)
    task = facts.get("task")
    if task == TASK_SUMMARY:
        return compose_summary(facts)
    if task == TASK_ANSWER:
        return compose_answer(facts)
    return OFFLINE_REPLY


def _usage(messages: list[BaseMessage], output_tokens: int) -> UsageMetadata:
    """Whitespace-delimited words: the local model's honest notion of a token."""
    input_tokens = sum(len(str(m.content).split()) for m in messages)
    return UsageMetadata(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
    )


class LocalChatModel(BaseChatModel):
    """Offline, keyless chat model: honest composition, streamed token by token."""

    @property
    def _llm_type(self) -> str:
        return "local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": MODEL_NAME}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_provider="local", ls_model_name=MODEL_NAME, ls_model_type="chat")

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = compose(messages)
        message = AIMessage(text, usage_metadata=_usage(messages, len(_TOKEN.findall(text))))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for token in _TOKEN.findall(compose(messages)):
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        tokens = _TOKEN.findall(compose(messages))
        for index, token in enumerate(tokens):
            usage = _usage(messages, len(tokens)) if index == len(tokens) - 1 else None
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token, usage_metadata=usage))
            if run_manager is not None:
                await run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk
            await asyncio.sleep(0)  # let other streams and cancellations run between tokens

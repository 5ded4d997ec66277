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
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from chains.local.composer import compose_answer, compose_summary
from chains.prompts import TASK_ANSWER, TASK_SUMMARY, facts_of

_TOKEN = re.compile(r"\S+\s*|\s+")
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


class LocalChatModel(BaseChatModel):
    """Offline, keyless chat model: honest composition, streamed token by token."""

    @property
    def _llm_type(self) -> str:
        return "local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": "local-composer-v1"}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(compose(messages)))])

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
        text = compose(messages)
        for token in _TOKEN.findall(text):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager is not None:
                await run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk
            await asyncio.sleep(0)  # let other streams and cancellations run between tokens

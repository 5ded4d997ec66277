"""The benchmark's model: the same fixed 400-chunk answer for every server, no waiting.

Async-native (`_astream`), so what is measured is the serving path, not the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

CHUNKS = 400
ANSWER_CHUNKS = [f"tok{i} " for i in range(CHUNKS)]


class FixedAnswerChatModel(BaseChatModel):
    """`chunks` pieces of answer; `delay_s` before each one models a provider's pace."""

    chunks: int = CHUNKS
    delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "bench-fixed"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("".join(ANSWER_CHUNKS[: self.chunks])))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for text in ANSWER_CHUNKS[: self.chunks]:
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for text in ANSWER_CHUNKS[: self.chunks]:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if run_manager is not None:
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

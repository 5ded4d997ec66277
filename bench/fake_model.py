"""The benchmarks' model: a fixed answer in fixed chunks, no waiting.

Async-native (`_astream`), so what is measured is the serving path, not the model.

Two answers, each `CHUNKS` pieces long:
- `ANSWER_CHUNKS`: plain text (`tok0 tok1 …`), what the raw SSE and plain LangServe
  servers stream;
- `analysis_chunks()`: the JSON analysis this service's interaction chain asks an LLM for
  (labels, pain points, preferences, a summary of about 1,400 characters, one action),
  cut into token-sized pieces. The service parses it as it streams, validates it and
  streams the summary word by word, so its stream carries about 250 summary pieces
  (one per word) plus the labels, the lists and the actions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

CHUNKS = 400
ANSWER_CHUNKS = [f"tok{i} " for i in range(CHUNKS)]

_SUMMARY_WORDS = ("The customer reports that the dashboard has been slow again since the last release and "
                  "asks for someone to look at it today because the weekly campaign report is due to their "
                  "board tomorrow morning.").split()
ANALYSIS = {
    "sentiment": {"label": "negative", "score": -0.4},
    "intent": "support_request",
    "urgency": "high",
    "confidence": {"sentiment": 0.8, "intent": 0.9, "urgency": 0.7},
    "pain_points": ["slow dashboard", "report due tomorrow"],
    "preferences": ["a fix today"],
    "summary": " ".join(_SUMMARY_WORDS[i % len(_SUMMARY_WORDS)] for i in range(250))[:1_400],
    "next_best_actions": [{
        "action": "escalate_to_support", "description": "Open a priority ticket for the dashboard.",
        "priority": "high", "confidence": 0.8, "estimated_impact": 0.7,
        "next_steps": ["open ticket", "call the customer"], "reason": "Blocked report due tomorrow.",
    }],
}


def split_evenly(text: str, pieces: int) -> list[str]:
    size, extra = divmod(len(text), pieces)
    out, start = [], 0
    for index in range(pieces):
        end = start + size + (1 if index < extra else 0)
        out.append(text[start:end])
        start = end
    return out


def analysis_chunks(pieces: int = CHUNKS) -> list[str]:
    return split_evenly(json.dumps(ANALYSIS), pieces)


class FixedAnswerChatModel(BaseChatModel):
    """`answer`, piece by piece; `delay_s` before each one models a provider's pace."""

    answer: list[str] = ANSWER_CHUNKS
    delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "bench-fixed"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("".join(self.answer)))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for text in self.answer:
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for text in self.answer:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if run_manager is not None:
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

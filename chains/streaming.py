"""Helpers shared by the chains for building streamed, field-by-field outputs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator
from langchain_core.runnables.utils import AddableDict
from pydantic import BaseModel

# Fields that stream as text pieces to append; every other field's latest value wins.
APPENDED_FIELDS = frozenset({"summary", "answer"})


class FieldChunk(AddableDict):
    """One chunk of a field-by-field stream.

    Merging (what `invoke`, `stream_log` and `stream_events` return, and what a client
    does with the chunks of `stream`) appends the text pieces of `summary` and `answer`
    and replaces every other field with its latest value: provisional labels are
    replaced by the final ones, never concatenated with them.
    """

    def __add__(self, other: dict[str, Any]) -> FieldChunk:  # type: ignore[override]
        merged = FieldChunk(self)
        for key, value in other.items():
            previous = merged.get(key)
            if key in APPENDED_FIELDS and isinstance(previous, str) and isinstance(value, str):
                merged[key] = previous + value
            else:
                merged[key] = value
        return merged

    def __radd__(self, other: dict[str, Any]) -> FieldChunk:  # type: ignore[override]
        return FieldChunk(other) + self


ChainBody = Callable[[dict[str, Any], RunnableConfig], AsyncIterator[dict[str, Any]]]


async def single_input(inputs: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """LangServe hands a transform the whole input as one piece; take the last piece."""
    value: dict[str, Any] | None = None
    async for value in inputs:
        pass
    if value is None:
        raise ValueError("chain received no input")
    return value


def field_streaming_chain(
    name: str, body: ChainBody, input_type: type[BaseModel], output_type: type[BaseModel]
) -> Runnable[Any, Any]:
    """A runnable whose stream is dict chunks with disjoint (or string-appendable) fields.

    Chunks are `AddableDict`s, so `invoke` returns their sum: the full output object.
    """

    async def transform(
        inputs: AsyncIterator[dict[str, Any]], config: RunnableConfig
    ) -> AsyncIterator[dict[str, Any]]:
        payload = await single_input(inputs)
        async for chunk in body(payload, config):
            yield chunk

    return RunnableGenerator(transform, name=name).with_types(
        input_type=input_type, output_type=output_type
    )
